/*
 * hello, Xen build: a PVH guest that behaves like the unix and multiboot
 * builds, with the start_info command line for argv, the first boot module
 * (xl "ramdisk") for the file image, Xen's one-shot timer for sleeping,
 * xenstore's control/shutdown (what `xl shutdown` writes) for SIGTERM, and
 * the first vif (netfront.c) under the shared network stack for HTTP.
 */
#include "xen.h"
#include "../ustar.h"
#include "../kernel/knobs.h"
#include "../net/net.h"

#define NET_TICK_NS (10 * 1000000ull) /* net_tick at least this often */

static struct tar_memory image; /* read by tar_list, then by the HTTP server */
static int serving;
static uint32_t timer_port;
static uint32_t stop_port; /* xenstore's, once control/shutdown is watched */

static void print_file(void *ctx, const char *path, uint64_t size)
{
	(void)ctx;
	kprintf("hello: file %s (%llu bytes)\n", path, (unsigned long long)size);
}

static void list_files(const struct hvm_start_info *si)
{
	const struct hvm_modlist_entry *mod = 0;

	if (si->nr_modules)
		mod = phys(si->modlist_paddr, sizeof(*mod));
	if (mod && mod->size < 0x100000000ull)
		image.base = phys(mod->paddr, (uint32_t)mod->size);
	if (!image.base) {
		kprintf("hello: files: none attached\n");
		return;
	}
	image.size = mod->size;
	kprintf("hello: files: %lu entries\n", (unsigned long)tar_list(tar_read_memory, print_file, &image));
}

/* Xen time in ms for net_tick (any counting-up clock will do), with only
 * 32-bit divisions: we link no libgcc. */
static uint32_t clock_ms(void)
{
	static uint64_t base;
	static uint32_t ms;
	uint64_t d = xen_time() - base;
	uint32_t whole;

	for (; d >= 4000000000u; d -= 4000000000u, base += 4000000000u)
		ms += 4000;
	whole = (uint32_t)d / 1000000;
	ms += whole;
	base += (uint64_t)whole * 1000000;
	return ms;
}

/* With --ipv4 and a vif, HTTP on it through the shared stack. */
static void net_start(void)
{
	struct net_config cfg = { .ip = ipv4_addr, .gateway = ipv4_gateway,
				  .prefix = (uint8_t)ipv4_prefix, .http_port = (uint16_t)http_port,
				  .version = app_version };
	const char *why;

	if (ipv4_prefix < 0) {
		kprintf("hello: http: no --ipv4, not serving\n");
		return;
	}
	if ((why = netfront_init(cfg.mac))) {
		kprintf("hello: net: %s, not serving\n", why);
		return;
	}
	net_init(&cfg, netfront_transmit, tar_read_memory, &image); /* prints "serving on" */
	serving = 1;
}

static void net_poll(void)
{
	if (!serving)
		return;
	netfront_poll(net_input);
	net_tick(clock_ms());
}

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/*
 * Graceful stop, the PV way: `xl shutdown` writes "poweroff" to our
 * control/shutdown and waits (up to a minute) for the guest to acknowledge
 * by emptying it; `xl reboot` writes "reboot". We watch the key, so we look
 * as soon as it changes (as the kvm kernel sees its power button at the
 * next tick: a supervisor may give a stop a second or less), or once per
 * heartbeat if the watch could not be set. Acting on a value only when it
 * changes keeps a request that stays set (say the acknowledgement failed)
 * from being reported every second.
 */
static void check_stop(void)
{
	static char last[32];
	char value[32];

	if (xs_read("control/shutdown", value, sizeof(value)) < 0 || str_eq(value, last))
		return;
	memcpy(last, value, sizeof(last));
	if (!str_eq(value, "poweroff") && !str_eq(value, "reboot") && !str_eq(value, "halt"))
		return; /* "", or something we cannot do (suspend) */

	if (ignore_stop)
		kprintf("hello: ignoring stop request\n");
	else
		kprintf("hello: stopping (xenstore control/shutdown=%s)\n", value);
	/* Acknowledge, so that xl shutdown returns at once instead of
	 * failing after its timeout; the next request then reads as a change. */
	xs_write("control/shutdown", "");
	if (!ignore_stop)
		xen_shutdown(SHUTDOWN_poweroff); /* exit 0, also for "reboot" */
}

static __attribute__((noreturn)) void exit_failure(void)
{
	kprintf("hello: exiting with failure\n");
	xen_shutdown(SHUTDOWN_crash);
}

/* Sleep until Xen's clock reaches deadline, or (when serving) a vif
 * event comes, or (when watching) a xenstore one: arm the one-shot timer
 * and block in SCHEDOP_poll on the VIRQ_TIMER port and the others. The
 * poll's own timeout is the same deadline, a second way out should the
 * VIRQ ever be lost. The vif port is cleared by netfront_poll, after
 * which it looks at its rings; the xenstore port by xs_watch_fired. */
static void sleep_until(uint64_t deadline)
{
	uint32_t ports[3] = { timer_port }, n = 1, i;

	if (serving)
		ports[n++] = netfront_port();
	if (stop_port)
		ports[n++] = stop_port;
	xen_set_timer(deadline);
	for (;;) {
		evtchn_clear(timer_port);
		if ((int64_t)(xen_time() - deadline) >= 0)
			return;
		for (i = 1; i < n; i++)
			if (evtchn_pending(ports[i]))
				return;
		evtchn_wait_any(ports, n, deadline);
	}
}

__attribute__((noreturn)) void xen_main(const struct hvm_start_info *si)
{
	const char *args = "";
	uint32_t beat = 0, flood_seq = 0;
	uint64_t next;

	idt_init();
	if (xen_detect()) {
		xen_map_shared_info();
		console_init();
	}

	if (si->magic != HVM_START_MAGIC) {
		kprintf("hello: bad PVH start info, halting\n");
		xen_shutdown(SHUTDOWN_crash);
	}
	/* Xen passes the xl cmdline exactly, with no kernel name in front. */
	if (si->cmdline_paddr && phys(si->cmdline_paddr, 1))
		args = phys(si->cmdline_paddr, 1);
	kprintf("hello: boot args: %s\n", args);
	parse_args(args);
	list_files(si);

	if (!on_xen) {
		kprintf("hello: not running on Xen, halting\n");
		xen_shutdown(SHUTDOWN_crash);
	}
	if (xen_bind_virq_timer(&timer_port) < 0) {
		kprintf("hello: xen: cannot bind VIRQ_TIMER, halting\n");
		xen_shutdown(SHUTDOWN_crash);
	}
	/* Advertise that we act on control/shutdown (advisory: xl writes the
	 * request either way, so a refused write changes nothing). */
	if (xs_init() < 0) {
		kprintf("hello: xenstore: not available, graceful stop disabled\n");
	} else {
		xs_write("control/feature-poweroff", "1");
		xs_write("control/feature-reboot", "1");
		stop_port = xs_watch("control/shutdown", "stop");
	}
	net_start();

	next = xen_time() + NSEC_PER_SEC;
	for (;;) {
		uint64_t now;

		if (flood)
			kprintf("hello: flood %u %s\n", ++flood_seq, FLOOD_TEXT);
		else if (serving && (int64_t)(next - xen_time()) > (int64_t)NET_TICK_NS)
			sleep_until(xen_time() + NET_TICK_NS);
		else
			sleep_until(next);
		net_poll();
		if (stop_port && xs_watch_fired())
			check_stop();

		now = xen_time();
		if ((int64_t)(now - next) >= 0) {
			/* Stay on the one-second grid, but skip beats a stalled
			 * vCPU missed instead of bursting them out. */
			next += NSEC_PER_SEC;
			if ((int64_t)(now - next) >= 0)
				next = now + NSEC_PER_SEC;
			kprintf("hello: heartbeat %u\n", ++beat);
			if (exit_after && beat == exit_after)
				exit_failure();
			if (serving && stop_serving_after && beat == stop_serving_after)
				net_stop_serving(); /* prints "http: stopped serving" */
			if (!stop_port)
				check_stop();
		}
	}
}
