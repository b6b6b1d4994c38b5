/*
 * Talking to Xen from a PVH guest: finding it, the hypercall page, the
 * shared_info page (system time, event-channel pending bits), HVM params,
 * event channels, the grant table, the one-shot timer and shutdown. Also the CPU exception
 * table, whose handler reports the fault and crashes the domain.
 *
 * Sleeping: the kernel never enables interrupts. It blocks in
 * SCHEDOP_poll on one event channel, which Xen wakes when that port
 * becomes pending (evtchn_check_pollers) whatever the port's mask or the
 * vCPU's upcall mask, and no interrupt is ever injected (no callback
 * vector is registered). SCHEDOP_block would not do here: an HVM/PVH vCPU
 * blocked in it is woken only by an interrupt it can take, so it would
 * need an upcall vector, an IDT handler and IF=1.
 */
#include "xen.h"

/* boot.S: page-aligned, in .bss */
extern struct shared_info shared_info_page;
extern char fault_stubs[];

int on_xen;
static volatile struct shared_info *shared;

/* The RAM page that XENMEM_add_to_physmap replaces with grant frame 0. */
static struct grant_entry_v1 grant_page[PAGE_SIZE / sizeof(struct grant_entry_v1)]
	__attribute__((aligned(PAGE_SIZE)));
static volatile struct grant_entry_v1 *grants;
static uint32_t grant_next = GNTTAB_NR_RESERVED;

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* With paging off, guest-physical addresses below 4 GiB are pointers.
 * NULL if [paddr, paddr + len) does not fit there. The empty asm hides the
 * integer-to-pointer origin from GCC's bounds warnings. */
void *phys(uint64_t paddr, uint32_t len)
{
	uint32_t p;

	if (!paddr || paddr + len < paddr || paddr + len > 0x100000000ull)
		return 0;
	p = (uint32_t)paddr;
	__asm__("" : "+r"(p));
	return (void *)p;
}

/* Find Xen's CPUID leaves (at 0x40000100 and up when Viridian is on) and
 * have Xen fill our hypercall page: write its physical address (page index
 * 0 in the low 12 bits) to the MSR that leaf base+2 names. This must run
 * in 32-bit mode: it also makes Xen use the 32-bit shared_info layout. */
int xen_detect(void)
{
	uint32_t base, a, b, c, d;

	for (base = XEN_CPUID_FIRST; base < XEN_CPUID_LAST; base += 0x100) {
		cpuid(base, &a, &b, &c, &d);
		if (b == XEN_SIG_EBX && c == XEN_SIG_ECX && d == XEN_SIG_EDX && a - base >= 2)
			break;
	}
	if (base >= XEN_CPUID_LAST)
		return 0;
	cpuid(base + 2, &a, &b, &c, &d);
	__asm__ volatile("wrmsr" : : "c"(b), "a"((uint32_t)hypercall_page), "d"(0) : "memory");
	/* Every slot starts with "mov $nr, %eax" (0xb8); still zero = not set up. */
	on_xen = *(volatile unsigned char *)hypercall_page != 0;
	return on_xen;
}

/* Xen's shared_info frame replaces the RAM page we reserved for it (the
 * page's memory goes back to Xen). Paging is off, so that page's address
 * is its physical address. */
void xen_map_shared_info(void)
{
	struct xen_add_to_physmap xatp = {
		.domid = DOMID_SELF,
		.space = XENMAPSPACE_shared_info,
		.idx = 0,
		.gpfn = (uint32_t)&shared_info_page / PAGE_SIZE,
	};

	if (HYPERCALL2(HYPERVISOR_memory_op, XENMEM_add_to_physmap, &xatp) == 0)
		shared = &shared_info_page;
	else
		kprintf("hello: xen: cannot map shared_info, halting\n");
	if (!shared)
		xen_shutdown(SHUTDOWN_crash);
}

static inline uint64_t rdtsc_ordered(void)
{
	uint32_t lo, hi;

	/* lfence keeps rdtsc from running ahead of the version read. */
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return (uint64_t)hi << 32 | lo;
}

/* Xen system time in ns from vCPU 0's time record:
 *   system_time + ((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul / 2^32
 * (a negative shift shifts right). Xen makes version odd while it rewrites
 * the record, so retry until an even version is the same before and after. */
uint64_t xen_time(void)
{
	volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
	uint32_t version, mul;
	uint64_t stamp, sys, tsc, delta;
	int8_t shift;

	do {
		version = t->version;
		barrier();
		stamp = t->tsc_timestamp;
		sys = t->system_time;
		mul = t->tsc_to_system_mul;
		shift = t->tsc_shift;
		tsc = rdtsc_ordered();
		barrier();
	} while ((version & 1) || version != t->version);

	delta = tsc - stamp;
	if ((int64_t)delta < 0) /* record taken on a CPU slightly ahead */
		delta = 0;
	if (shift < 0)
		delta >>= -shift;
	else
		delta <<= shift;
	/* 64x32->96-bit product >> 32, in 32x32->64 pieces (no libgcc). */
	return sys + (delta >> 32) * mul + (((delta & 0xffffffff) * mul) >> 32);
}

int xen_get_param(uint32_t index, uint64_t *value)
{
	struct xen_hvm_param p = { .domid = DOMID_SELF, .index = index };
	long rc = HYPERCALL2(HYPERVISOR_hvm_op, HVMOP_get_param, &p);

	*value = rc ? 0 : p.value;
	return rc ? -1 : 0;
}

/* One-shot timer at an absolute system time: VIRQ_TIMER fires then. */
void xen_set_timer(uint64_t deadline)
{
	HYPERCALL2(HYPERVISOR_set_timer_op, (uint32_t)deadline, (uint32_t)(deadline >> 32));
}

int xen_bind_virq_timer(uint32_t *port)
{
	struct evtchn_bind_virq bind = { .virq = VIRQ_TIMER, .vcpu = 0 };

	if (HYPERCALL2(HYPERVISOR_event_channel_op, EVTCHNOP_bind_virq, &bind))
		return -1;
	*port = bind.port;
	return 0;
}

/* A new port of ours for remote_dom to bind (a backend's event channel). */
int evtchn_alloc_unbound(uint16_t remote_dom, uint32_t *port)
{
	struct evtchn_alloc_unbound a = { .dom = DOMID_SELF, .remote_dom = remote_dom };

	if (HYPERCALL2(HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, &a))
		return -1;
	*port = a.port;
	return 0;
}

int evtchn_pending(uint32_t port)
{
	return (shared->evtchn_pending[port / 32] >> (port % 32)) & 1;
}

/* A locked operation, so it is also a full barrier: a ring read after it
 * cannot be satisfied before the bit is clear. */
void evtchn_clear(uint32_t port)
{
	__asm__ volatile("lock andl %1, %0"
			 : "+m"(shared->evtchn_pending[port / 32])
			 : "r"(~(1u << (port % 32)))
			 : "memory");
}

void evtchn_notify(uint32_t port)
{
	struct evtchn_send send = { .port = port };

	HYPERCALL2(HYPERVISOR_event_channel_op, EVTCHNOP_send, &send);
}

/* Block until port is pending or Xen's clock reaches deadline (0: no
 * deadline). Returns at once if the port is already pending, so callers
 * clear it, check their condition, then wait: a notification that comes
 * after the check sets the bit again and ends the wait. */
void evtchn_wait(uint32_t port, uint64_t deadline)
{
	evtchn_wait_any(&port, 1, deadline);
}

/* The same for several ports: returns once any of them is pending. (With
 * more than one port Xen wakes the poller on any event of the domain, so
 * this may also return early: callers loop.) */
void evtchn_wait_any(const uint32_t *ports, uint32_t n, uint64_t deadline)
{
	struct sched_poll poll = { .ports = (uint32_t)ports, .nr_ports = n, .timeout = deadline };

	HYPERCALL2(HYPERVISOR_sched_op, SCHEDOP_poll, &poll);
}

/* Map grant table frame 0 over grant_page: 512 v1 entries, of which the
 * first 8 are reserved. That is all a PVH guest does to get a grant table
 * (Xen grows the table to the frame asked for; v1 is the default). */
int gnttab_init(void)
{
	struct xen_add_to_physmap xatp = {
		.domid = DOMID_SELF,
		.space = XENMAPSPACE_grant_table,
		.idx = 0,
		.gpfn = (uint32_t)grant_page / PAGE_SIZE,
	};

	if (!grants && HYPERCALL2(HYPERVISOR_memory_op, XENMEM_add_to_physmap, &xatp) == 0)
		grants = grant_page;
	return grants ? 0 : -1;
}

/* Let domid access one of our pages, for good (nothing here is ever
 * revoked: the pages are the rings and buffers of a device that lives as
 * long as the domain). Returns the grant reference, 0 if the table is full
 * (0 is never handed out: it is reserved). */
uint32_t gnttab_grant(uint16_t domid, const void *page, int readonly)
{
	uint32_t ref = grant_next;

	if (!grants || ref >= sizeof(grant_page) / sizeof(grant_page[0]))
		return 0;
	grant_next++;
	grants[ref].domid = domid;
	grants[ref].frame = (uint32_t)page / PAGE_SIZE;
	barrier(); /* domid and frame before the flags that make them valid */
	grants[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
	return ref;
}

/* Poweroff (exit 0) or crash. Output already in the console ring is
 * drained first, so the last lines are not lost when the toolstack tears
 * the domain down. Off Xen there is nobody to tell: stop the CPU. */
__attribute__((noreturn)) void xen_shutdown(uint32_t reason)
{
	struct sched_shutdown s = { .reason = reason };

	if (on_xen) {
		console_flush();
		HYPERCALL2(HYPERVISOR_sched_op, SCHEDOP_shutdown, &s);
	}
	/* Not reached on Xen (the vCPU is descheduled for good). Note that on
	 * Xen, hlt with interrupts off would count as a poweroff. */
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* --- CPU exceptions: 32 interrupt gates to the stubs in boot.S. */
struct idt_gate {
	uint16_t off_lo, sel;
	uint8_t zero, type;
	uint16_t off_hi;
} __attribute__((packed));

static struct idt_gate idt[32];

void idt_init(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint32_t base; } idtr = { sizeof(idt) - 1, (uint32_t)idt };

	for (int i = 0; i < 32; i++) {
		uint32_t a = (uint32_t)(fault_stubs + 8 * i);

		idt[i] = (struct idt_gate){ (uint16_t)a, 0x08, 0, 0x8e, (uint16_t)(a >> 16) };
	}
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

void kernel_fault(uint32_t vector)
{
	kprintf("hello: cpu exception %u, halting\n", vector);
	xen_shutdown(SHUTDOWN_crash);
}
