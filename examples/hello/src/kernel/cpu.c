/*
 * Interrupts and the timer: just enough for the main loop to sleep in hlt
 * between 100 Hz timer ticks instead of spinning, since several instances
 * may share two host cores under TCG.
 */
#include "kernel.h"

#define PIC1 0x20
#define PIC2 0xa0
#define PIT_HZ 1193182

struct idt_gate {
	uint16_t off_lo, sel;
	uint8_t zero, type;
	uint16_t off_hi;
} __attribute__((packed));

extern char fault_stubs[], irq0_stub[], irq_spurious_stub[];

volatile uint32_t ticks;
/* Vectors 0-31 are CPU exceptions, 32-47 the remapped PIC lines. Anything
 * above is beyond the IDT limit and faults (#GP), which we also report. */
static struct idt_gate idt[48];

static void set_gate(int n, void *handler)
{
	uint32_t a = (uint32_t)handler;

	idt[n] = (struct idt_gate){ (uint16_t)a, 0x08, 0, 0x8e, (uint16_t)(a >> 16) };
}

void kernel_fault(uint32_t vector)
{
	kprintf("hello: cpu exception %u, halting\n", vector);
}

void cpu_init(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint32_t base; } idtr = { sizeof(idt) - 1, (uint32_t)idt };
	int i;

	for (i = 0; i < 32; i++)
		set_gate(i, fault_stubs + 8 * i);
	set_gate(32, irq0_stub);
	for (i = 33; i < 48; i++)
		set_gate(i, irq_spurious_stub);
	__asm__ volatile("lidt %0" : : "m"(idtr));

	/* The BIOS leaves the PIC on vectors 8-15, which collide with CPU
	 * exceptions; move it to 32-47 and unmask only the timer. */
	outb(PIC1, 0x11);
	outb(PIC2, 0x11);
	outb(PIC1 + 1, 32);
	outb(PIC2 + 1, 40);
	outb(PIC1 + 1, 4); /* slave on IRQ2 */
	outb(PIC2 + 1, 2);
	outb(PIC1 + 1, 0x01);
	outb(PIC2 + 1, 0x01);
	outb(PIC1 + 1, 0xfe);
	outb(PIC2 + 1, 0xff);

	/* PIT channel 0, rate generator (mode 2), HZ interrupts per second. */
	outb(0x43, 0x34);
	outb(0x40, (uint8_t)((PIT_HZ + HZ / 2) / HZ));
	outb(0x40, (uint8_t)(((PIT_HZ + HZ / 2) / HZ) >> 8));
	/* No sti here: interrupts stay off outside the windows below. */
}

/* Interrupts are enabled only inside these windows (see boot.S for why).
 * "sti" takes effect after the next instruction, so no tick can land between
 * the ticks check and the hlt. The closing cli is a no-op after a timer
 * interrupt (it already returns with IF=0) but keeps IF=0 if anything else
 * ends the window (no pending interrupt, or an NMI/SMI waking the hlt). */
void wait_for_tick(void)
{
	uint32_t t = ticks;

	while (ticks == t)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* For busy loops (flood mode): let a pending timer interrupt in, if any. */
void poll_interrupts(void)
{
	__asm__ volatile("sti; nop; cli" ::: "memory");
}
