/* Declarations for the multiboot hello kernel (freestanding, 32-bit, no libc). */
#ifndef HELLO_KERNEL_H
#define HELLO_KERNEL_H

#include <stdint.h>
#include "klib.h"

#define HZ 100 /* timer interrupts per second */

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline __attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* console.c: COM1, under kprintf */
void serial_init(void);

/* cpu.c: interrupts and the timer */
extern volatile uint32_t ticks;
void cpu_init(void);
void wait_for_tick(void);
void poll_interrupts(void);

/* ata.c: primary master disk, LBA28 PIO */
int ata_init(void);
int ata_read(uint32_t lba, void *buf);

/* virtio_net.c: the NIC, polled, under the shared stack (../net/net.h) */
int virtio_net_init(uint8_t mac[6]);
void virtio_net_transmit(const void *frame, unsigned len);
void virtio_net_poll(void);

/* acpi.c: power button and soft-off */
int acpi_init(void);
int acpi_power_button(void);
void acpi_poweroff(void);

#endif
