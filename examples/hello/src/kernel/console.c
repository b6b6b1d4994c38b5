/* Polled COM1 output; the printf on top of it is shared (kprintf.h). */
#include "kernel.h"

#define COM1 0x3f8

void serial_init(void)
{
	outb(COM1 + 1, 0x00); /* no UART interrupts: output is polled */
	outb(COM1 + 3, 0x80); /* DLAB on to set the divisor */
	outb(COM1 + 0, 0x01); /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03); /* 8N1 */
	outb(COM1 + 2, 0xc7); /* FIFO on, cleared */
	outb(COM1 + 4, 0x03); /* DTR + RTS */
}

static void putc(char c)
{
	/* Bounded wait: with no UART present we would rather lose output than hang. */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	/* No \r is added: the host must see exactly the bytes the unix build prints. */
	outb(COM1, (uint8_t)c);
}

#include "kprintf.h"
