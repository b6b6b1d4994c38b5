/*
 * Console for the Xen kernel, under the shared kprintf:
 *
 * 1. The PV console ring (HVM_PARAM_CONSOLE_PFN/_EVTCHN), which
 *    xenconsoled in dom0 copies to the domain's pty and log: what
 *    `xl console` shows. Bytes go into out[] at out_prod; xenconsoled
 *    consumes from out_cons. We notify its event channel at each end of
 *    line, and when the ring is full we notify and wait for it to make
 *    room (bounded, so a dead consumer costs one second, then output is
 *    dropped until there is room again).
 * 2. Without a ring: HYPERVISOR_console_io(CONSOLEIO_write), Xen's own
 *    console. Xen drops a domU's writes unless it was built with guest
 *    console output enabled (debug builds); they show in `xl dmesg`.
 * 3. Not on Xen at all (e.g. QEMU booting the ELF through its own PVH
 *    loader): COM1, so that the reason for stopping can be seen.
 */
#include "xen.h"

#define RING_SIZE 2048 /* sizeof(out) */
#define STALL_NS NSEC_PER_SEC
#define COM1 0x3f8

static volatile struct xencons_interface *ring;
static uint32_t ring_port;
static int stalled; /* the consumer stopped taking output: drop, don't wait */

static char line[128]; /* console_io fallback: one hypercall per line */
static uint32_t line_len;

void console_init(void)
{
	uint64_t pfn, port;

	if (xen_get_param(HVM_PARAM_CONSOLE_PFN, &pfn) || !pfn ||
	    xen_get_param(HVM_PARAM_CONSOLE_EVTCHN, &port))
		return;
	ring = phys(pfn * PAGE_SIZE, PAGE_SIZE);
	ring_port = (uint32_t)port;
}

/* Wait (bounded) until the consumer has taken everything up to prod
 * minus `room`; returns 0 if it did. */
static int ring_wait(uint32_t prod, uint32_t room)
{
	uint64_t deadline = xen_time() + STALL_NS;

	evtchn_notify(ring_port);
	for (;;) {
		evtchn_clear(ring_port);
		if (prod - ring->out_cons <= room)
			return 0;
		if (xen_time() >= deadline)
			return -1;
		evtchn_wait(ring_port, deadline);
	}
}

static void ring_putc(char c)
{
	uint32_t prod = ring->out_prod; /* only we write it */

	if (prod - ring->out_cons >= RING_SIZE) {
		if (stalled || ring_wait(prod, RING_SIZE - 1) < 0) {
			stalled = 1;
			return;
		}
	}
	stalled = 0;
	ring->out[prod % RING_SIZE] = c;
	barrier(); /* the byte before the index that publishes it */
	ring->out_prod = prod + 1;
	if (c == '\n')
		evtchn_notify(ring_port);
}

static void line_flush(void)
{
	if (line_len)
		HYPERCALL3(HYPERVISOR_console_io, CONSOLEIO_write, line_len, line);
	line_len = 0;
}

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* COM1, polled as in the multiboot kernel. QEMU's UART transmits without
 * being programmed first; with no UART the bounded wait drops output. */
static void serial_putc(char c)
{
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	outb(COM1, (uint8_t)c);
}

static void putc(char c)
{
	if (ring) {
		ring_putc(c);
	} else if (on_xen) {
		line[line_len++] = c;
		if (c == '\n' || line_len == sizeof(line))
			line_flush();
	} else {
		serial_putc(c);
	}
}

/* Before shutting down: wait (bounded) until xenconsoled has read it all. */
void console_flush(void)
{
	if (ring && !stalled && ring->out_prod != ring->out_cons)
		ring_wait(ring->out_prod, 0);
	line_flush();
}

#include "../kernel/kprintf.h"
