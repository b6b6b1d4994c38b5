/*
 * hello, arm64 build: booted by U-Boot (`booti`) on a Raspberry Pi 3 or
 * QEMU's `virt` and `raspi3b` machines, and behaving like the other builds:
 * the device tree's /chosen bootargs for argv, the initrd U-Boot loaded
 * (/chosen linux,initrd-start/-end) for the file image, the generic timer
 * for heartbeats, and a stop request from the board's power button (virt:
 * the PL061 GPIO line QMP's system_powerdown raises) or a `stop` line on
 * the control UART (Pi: the PL011, whose console is the mini UART).
 * Exit statuses reach QEMU through semihosting.
 */
#include <stddef.h>
#include <stdint.h>
#include "../ustar.h"
#include "../kernel/knobs.h"

#define HZ 100

/* What differs between the boards this kernel knows, picked by the device
 * tree's root `compatible`. */
struct board {
	const char *compatible;
	uintptr_t console;	/* PL011 (virt) or mini UART (Pi) */
	int console_is_mini_uart;
	uintptr_t control;	/* PL011 reading `stop` lines, or 0 */
	uintptr_t power_gpio;	/* PL061 whose line 3 is the power button, or 0 */
	uintptr_t gicd, gicc;	/* GICv2 (virt), or 0 */
	uintptr_t local_intc;	/* BCM2836 per-core interrupt control (Pi), or 0 */
};

static const struct board boards[] = {
	{ .compatible = "linux,dummy-virt", .console = 0x09000000, .power_gpio = 0x09030000,
	  .gicd = 0x08000000, .gicc = 0x08010000 },
	{ .compatible = "brcm,bcm2837", .console = 0x3f215040, .console_is_mini_uart = 1,
	  .control = 0x3f201000, .local_intc = 0x40000000 },
};

static const struct board *board;

static inline uint32_t rd32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void wr32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

/* PL011: DR at 0, FR at 0x18 (TXFF bit 5, RXFE bit 4). Mini UART: IO at 0,
 * LSR at 0x14 (transmitter empty bit 5). */
static void uart_putc(uintptr_t base, int mini, char c)
{
	if (mini) {
		while (!(rd32(base + 0x14) & 0x20))
			;
	} else {
		while (rd32(base + 0x18) & 0x20)
			;
	}
	wr32(base, (uint8_t)c);
}

static void putc(char c)
{
	if (!board)
		return;
	if (c == '\n')
		uart_putc(board->console, board->console_is_mini_uart, '\r');
	uart_putc(board->console, board->console_is_mini_uart, c);
}

#include "../kernel/kprintf.h"

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;

	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;

	while (n--)
		*p++ = *q++;
	return d;
}

/* Semihosting SYS_EXIT: QEMU (-semihosting) exits with the given status.
 * On a board without a debugger this traps; we never get back anyway. */
static __attribute__((noreturn)) void semihosting_exit(uint32_t status)
{
	uint64_t block[2] = { 0x20026 /* ADP_Stopped_ApplicationExit */, status };
	register uint64_t op __asm__("x0") = 0x18;
	register uint64_t arg __asm__("x1") = (uint64_t)block;

	__asm__ volatile("hlt #0xf000" : : "r"(op), "r"(arg) : "memory");
	for (;;)
		__asm__ volatile("wfi");
}

/* --- the device tree (big-endian, unaligned-safe reads) --- */

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* Whether the NUL-separated string list [p, p+len) holds s. */
static int list_has(const char *p, uint32_t len, const char *s)
{
	for (const char *end = p + len; p < end;) {
		if (str_eq(p, s))
			return 1;
		while (p < end && *p)
			p++;
		p++;
	}
	return 0;
}

/* A cell pair or single cell, as /chosen's initrd properties are written. */
static uint64_t cells(const unsigned char *p, uint32_t len)
{
	return len == 8 ? (uint64_t)be32(p) << 32 | be32(p + 4) : len == 4 ? be32(p) : 0;
}

struct chosen {
	const char *bootargs;
	uint64_t initrd_start, initrd_end;
};

/* Walks the structure block once: the root's compatible picks the board,
 * /chosen gives the boot arguments and the initrd. */
static int read_fdt(const unsigned char *fdt, struct chosen *chosen)
{
	const unsigned char *p, *strings;
	int depth = 0, in_chosen = 0;

	if (!fdt || be32(fdt) != 0xd00dfeed)
		return -1;
	p = fdt + be32(fdt + 8);
	strings = fdt + be32(fdt + 12);
	for (;;) {
		uint32_t token = be32(p);

		p += 4;
		if (token == 1) { /* BEGIN_NODE, then the NUL-terminated name */
			const char *name = (const char *)p;

			depth++;
			in_chosen = depth == 2 && (str_eq(name, "chosen") || str_eq(name, "chosen@0"));
			while (*p)
				p++;
			p = (const unsigned char *)(((uintptr_t)p + 4) & ~(uintptr_t)3);
		} else if (token == 2) { /* END_NODE */
			depth--;
			in_chosen = 0;
		} else if (token == 3) { /* PROP: len, nameoff, value */
			uint32_t len = be32(p);
			const char *name = (const char *)strings + be32(p + 4);
			const unsigned char *value = p + 8;

			if (depth == 1 && str_eq(name, "compatible")) {
				for (size_t i = 0; i < sizeof(boards) / sizeof(boards[0]); i++)
					if (list_has((const char *)value, len, boards[i].compatible))
						board = &boards[i];
			} else if (in_chosen && str_eq(name, "bootargs") && len) {
				chosen->bootargs = (const char *)value;
			} else if (in_chosen && str_eq(name, "linux,initrd-start")) {
				chosen->initrd_start = cells(value, len);
			} else if (in_chosen && str_eq(name, "linux,initrd-end")) {
				chosen->initrd_end = cells(value, len);
			}
			p = value + ((len + 3) & ~3u);
		} else if (token == 4) { /* NOP */
		} else {
			return 0; /* END, or something we do not know */
		}
	}
}

/* --- the file image (the initrd) --- */

static void print_file(void *ctx, const char *path, uint64_t size)
{
	(void)ctx;
	kprintf("hello: file %s (%llu bytes)\n", path, (unsigned long long)size);
}

/* --- time: the generic timer's virtual counter, an interrupt per tick that
 * only wakes `wfi` (IRQs stay masked: nothing is ever taken) --- */

static uint64_t counter_hz, tick_cycles, next_tick;

static uint64_t now(void)
{
	uint64_t v;

	__asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
	return v;
}

static void timer_init(void)
{
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(counter_hz));
	tick_cycles = counter_hz / HZ;
	if (board->gicd) {
		wr32(board->gicd + 0x100, 1u << 27); /* enable PPI 27, the virtual timer */
		wr32(board->gicd, 1);
		wr32(board->gicc + 0x4, 0xff);	      /* priority mask: let all through */
		wr32(board->gicc, 1);
	}
	if (board->local_intc)
		wr32(board->local_intc + 0x40, 1u << 3); /* core 0: CNTV IRQ */
	if (board->control)
		wr32(board->control + 0x2c, 0x70); /* LCR_H: 8 bits, FIFOs on (16 deep) */
	next_tick = now() + tick_cycles;
}

static void wait_for_tick(void)
{
	__asm__ volatile("msr cntv_cval_el0, %0; msr cntv_ctl_el0, %1; isb" : : "r"(next_tick), "r"(1ul));
	while ((int64_t)(now() - next_tick) < 0)
		__asm__ volatile("wfi");
	__asm__ volatile("msr cntv_ctl_el0, %0; isb" : : "r"(2ul)); /* masked: the line drops */
	if (board->gicc)
		wr32(board->gicc + 0x10, rd32(board->gicc + 0xc)); /* EOI what IAR acknowledges */
	next_tick += tick_cycles;
	if ((int64_t)(now() - next_tick) >= 0) /* a stalled vCPU: do not burst */
		next_tick = now() + tick_cycles;
}

/* --- stop requests --- */

/* virt: the power button is PL061 line 3, high for 100 ms per press (GPIODATA
 * is read through an address mask: bit 3 << 2). 1 on a new press. */
static int power_button(void)
{
	static int was;
	int is;

	if (!board->power_gpio)
		return 0;
	is = !!(rd32(board->power_gpio + (0x08 << 2)) & 0x08);
	if (is == was)
		return 0;
	was = is;
	return is;
}

static void control_puts(const char *s)
{
	for (; *s; s++)
		uart_putc(board->control, 0, *s);
}

/* Pi: a `stop` line on the control UART (the agent's control socket). */
static int control_stop(void)
{
	static char line[16];
	static unsigned len;

	if (!board->control)
		return 0;
	while (!(rd32(board->control + 0x18) & 0x10)) {
		char c = (char)rd32(board->control);

		if (c != '\n') {
			if (len < sizeof(line) - 1)
				line[len++] = c;
			continue;
		}
		line[len] = 0;
		len = 0;
		if (str_eq(line, "stop"))
			return 1;
		control_puts("error: unknown command\n");
	}
	return 0;
}

void rpi_main(const unsigned char *fdt)
{
	struct chosen chosen = { 0 };
	struct tar_memory image = { 0 };
	uint32_t beat = 0, ticks = 0, flood_seq = 0;

	if (read_fdt(fdt, &chosen) < 0 || !board)
		semihosting_exit(4); /* nowhere to print why */
	kprintf("hello: boot args: %s\n", chosen.bootargs ? chosen.bootargs : "");
	if (chosen.bootargs)
		parse_args(chosen.bootargs);

	if (chosen.initrd_end > chosen.initrd_start) {
		image.base = (const unsigned char *)(uintptr_t)chosen.initrd_start;
		image.size = chosen.initrd_end - chosen.initrd_start;
		kprintf("hello: files: %lu entries\n", (unsigned long)tar_list(tar_read_memory, print_file, &image));
	} else {
		kprintf("hello: files: none attached\n");
	}
	if (ipv4_prefix < 0)
		kprintf("hello: http: no --ipv4, not serving\n");
	else
		kprintf("hello: net: no NIC driver in the arm64 build, not serving\n");

	timer_init();
	for (;;) {
		int stop;

		if (flood)
			kprintf("hello: flood %u %s\n", ++flood_seq, FLOOD_TEXT);
		if (!flood || (int64_t)(now() - next_tick) >= 0) {
			wait_for_tick();
			ticks++;
		}

		stop = power_button() ? 1 : control_stop() ? 2 : 0;
		if (stop) {
			if (ignore_stop) {
				kprintf("hello: ignoring stop request\n");
				if (stop == 2)
					control_puts("ignored\n");
			} else {
				kprintf("hello: stopping (%s)\n", stop == 1 ? "power button" : "control");
				if (stop == 2)
					control_puts("ok\n");
				semihosting_exit(0);
			}
		}
		if (ticks >= HZ) {
			ticks = 0;
			kprintf("hello: heartbeat %u\n", ++beat);
			if (exit_after && beat == exit_after) {
				kprintf("hello: exiting with failure\n");
				semihosting_exit(3);
			}
		}
	}
}
