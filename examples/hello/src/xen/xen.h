/*
 * The Xen PVH guest kernel: the part of Xen's public ABI it uses, written
 * out here for a 32-bit x86 guest (Xen's own headers are not used). Layouts
 * are those a 32-bit HVM/PVH guest sees: Xen serves hypercalls made in
 * 32-bit mode through its "compat" (i386) ABI, whose structures are exactly
 * what gcc -m32 lays out, and it latches the 32-bit shared_info layout when
 * the hypercall page is set up from 32-bit code. The _Static_asserts pin
 * every offset this kernel relies on.
 */
#ifndef HELLO_XEN_H
#define HELLO_XEN_H

#include <stddef.h>
#include <stdint.h>
#include "../kernel/klib.h"

#define PAGE_SIZE 4096
#define NSEC_PER_SEC 1000000000ull

/* --- PVH boot: %ebx points at this at the XEN_ELFNOTE_PHYS32_ENTRY entry. */
#define HVM_START_MAGIC 0x336ec578 /* "xEn3", 0x80 set in the 'E' */

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;       /* 0 or 1; only version-0 fields are used */
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr; /* -> struct hvm_modlist_entry[nr_modules] */
	uint64_t cmdline_paddr; /* NUL-terminated; 0 if none */
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;  /* version >= 1 */
	uint32_t memmap_entries;
	uint32_t reserved;
};
_Static_assert(offsetof(struct hvm_start_info, nr_modules) == 12, "start_info");
_Static_assert(offsetof(struct hvm_start_info, modlist_paddr) == 16, "start_info");
_Static_assert(offsetof(struct hvm_start_info, cmdline_paddr) == 24, "start_info");
_Static_assert(offsetof(struct hvm_start_info, rsdp_paddr) == 32, "start_info");
_Static_assert(sizeof(struct hvm_start_info) == 56, "start_info");

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};
_Static_assert(sizeof(struct hvm_modlist_entry) == 32, "modlist entry");

/* --- Hypercalls: "call hypercall_page + 32 * nr", arguments in ebx, ecx,
 * edx (esi, edi), result in eax. */
#define HYPERVISOR_memory_op        12
#define HYPERVISOR_set_timer_op     15
#define HYPERVISOR_console_io       18
#define HYPERVISOR_sched_op         29
#define HYPERVISOR_event_channel_op 32
#define HYPERVISOR_hvm_op           34

/* CPUID leaves: "XenVMMXenVMM" at 0x40000000 + 0x100 * k; leaf base+2
 * returns in ebx the MSR that takes the hypercall page's address. */
#define XEN_CPUID_FIRST  0x40000000
#define XEN_CPUID_LAST   0x40010000
#define XEN_SIG_EBX 0x566e6558 /* "XenV" */
#define XEN_SIG_ECX 0x65584d4d /* "MMXe" */
#define XEN_SIG_EDX 0x4d4d566e /* "nVMM" */

#define DOMID_SELF 0x7ff0

/* memory_op */
#define XENMEM_add_to_physmap 7
#define XENMAPSPACE_shared_info 0
#define XENMAPSPACE_grant_table 1 /* idx = frame number (v1 entries) */

struct xen_add_to_physmap {
	uint16_t domid;
	uint16_t size;  /* only for XENMAPSPACE_gmfn_range */
	uint32_t space;
	uint32_t idx;   /* xen_ulong_t: 32 bits for a 32-bit guest */
	uint32_t gpfn;  /* xen_pfn_t: likewise */
};
_Static_assert(offsetof(struct xen_add_to_physmap, space) == 4, "add_to_physmap");
_Static_assert(offsetof(struct xen_add_to_physmap, idx) == 8, "add_to_physmap");
_Static_assert(sizeof(struct xen_add_to_physmap) == 16, "add_to_physmap");

/* hvm_op */
#define HVMOP_get_param 1
#define HVM_PARAM_STORE_PFN      1
#define HVM_PARAM_STORE_EVTCHN   2
#define HVM_PARAM_CONSOLE_PFN    17
#define HVM_PARAM_CONSOLE_EVTCHN 18

struct xen_hvm_param {
	uint16_t domid;
	uint16_t pad;
	uint32_t index;
	uint64_t value;
};
_Static_assert(offsetof(struct xen_hvm_param, value) == 8, "hvm_param");
_Static_assert(sizeof(struct xen_hvm_param) == 16, "hvm_param");

/* sched_op */
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll     3
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_crash    3

struct sched_shutdown {
	uint32_t reason;
};

struct sched_poll {
	uint32_t ports;    /* guest handle: address of evtchn_port_t[nr_ports] */
	uint32_t nr_ports;
	uint64_t timeout;  /* absolute system time (ns); 0 = none */
};
_Static_assert(offsetof(struct sched_poll, timeout) == 8, "sched_poll");
_Static_assert(sizeof(struct sched_poll) == 16, "sched_poll");

/* event_channel_op */
#define EVTCHNOP_bind_virq     1
#define EVTCHNOP_send          4
#define EVTCHNOP_alloc_unbound 6
#define VIRQ_TIMER 0

struct evtchn_bind_virq {
	uint32_t virq;
	uint32_t vcpu;
	uint32_t port; /* out */
};
_Static_assert(sizeof(struct evtchn_bind_virq) == 12, "bind_virq");

struct evtchn_send {
	uint32_t port;
};

/* A port of ours that remote_dom may bind to (a backend, via xenstore). */
struct evtchn_alloc_unbound {
	uint16_t dom;        /* DOMID_SELF */
	uint16_t remote_dom;
	uint32_t port;       /* out */
};
_Static_assert(sizeof(struct evtchn_alloc_unbound) == 8, "alloc_unbound");

/* console_io */
#define CONSOLEIO_write 0

/* --- The shared_info page, 32-bit layout (2-level event channels). */
struct vcpu_time_info {
	uint32_t version;       /* odd while Xen updates the record */
	uint32_t pad0;
	uint64_t tsc_timestamp; /* guest TSC at system_time */
	uint64_t system_time;   /* ns since host boot, Xen's NOW() */
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad1[2];
};
_Static_assert(sizeof(struct vcpu_time_info) == 32, "vcpu_time_info");

struct vcpu_info {
	uint8_t evtchn_upcall_pending;
	uint8_t evtchn_upcall_mask;
	uint16_t pad;
	uint32_t evtchn_pending_sel;
	uint32_t arch[6];       /* cr2 and padding */
	struct vcpu_time_info time;
};
_Static_assert(offsetof(struct vcpu_info, time) == 32, "vcpu_info");
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info");

struct shared_info {
	struct vcpu_info vcpu_info[32];
	/* One bit per port. Little-endian bit strings: port p is bit p % 8 of
	 * byte 2048 + p / 8 in the 64-bit layout too. */
	uint32_t evtchn_pending[32];
	uint32_t evtchn_mask[32];
	/* wallclock and arch fields follow, unused */
};
_Static_assert(offsetof(struct shared_info, evtchn_pending) == 2048, "shared_info");
_Static_assert(offsetof(struct shared_info, evtchn_mask) == 2176, "shared_info");

/* --- PV console ring (HVM_PARAM_CONSOLE_PFN) */
struct xencons_interface {
	char in[1024];
	char out[2048];
	uint32_t in_cons, in_prod;
	uint32_t out_cons, out_prod;
};
_Static_assert(offsetof(struct xencons_interface, out) == 1024, "xencons");
_Static_assert(offsetof(struct xencons_interface, out_cons) == 3080, "xencons");
_Static_assert(offsetof(struct xencons_interface, out_prod) == 3084, "xencons");

/* --- xenstore ring (HVM_PARAM_STORE_PFN) and wire format */
#define XENSTORE_RING_SIZE 1024
#define XENSTORE_PAYLOAD_MAX 4096

struct xenstore_domain_interface {
	char req[XENSTORE_RING_SIZE];
	char rsp[XENSTORE_RING_SIZE];
	uint32_t req_cons, req_prod;
	uint32_t rsp_cons, rsp_prod;
	uint32_t server_features;
	uint32_t connection;
	uint32_t error;
};
_Static_assert(offsetof(struct xenstore_domain_interface, req_cons) == 2048, "xenstore ring");
_Static_assert(offsetof(struct xenstore_domain_interface, rsp_prod) == 2060, "xenstore ring");

struct xsd_sockmsg {
	uint32_t type;
	uint32_t req_id;
	uint32_t tx_id;
	uint32_t len;  /* payload bytes that follow */
};

#define XS_READ         2
#define XS_WATCH        4
#define XS_WRITE        11
#define XS_WATCH_EVENT  15
#define XS_ERROR        16

/* --- Grant table, version 1 (the default): frame 0 mapped with
 * XENMEM_add_to_physmap holds 512 entries. Entry ref lets domain `domid`
 * map or copy our frame `frame` (a guest frame number; paging is off, so
 * address / 4096). Refs 0-7 are reserved (the toolstack uses 0 for the
 * console and 1 for xenstore). */
#define GNTTAB_NR_RESERVED 8
#define GTF_permit_access  1
#define GTF_readonly       4

struct grant_entry_v1 {
	uint16_t flags;  /* written last: it is what makes the entry valid */
	uint16_t domid;
	uint32_t frame;
};
_Static_assert(sizeof(struct grant_entry_v1) == 8, "grant_entry_v1");

/* --- PV network rings (io/netif.h, io/ring.h): one page each, a 64-byte
 * header then 2^k entries that are a request or, once the other end has
 * handled it, its response. Indexes run free (mod 2^32); the event
 * fields ask the other end to notify when its producer index passes them. */
struct netif_tx_request {
	uint32_t gref;   /* the page holding the frame */
	uint16_t offset; /* frame starts here in the page ... */
	uint16_t flags;  /* NETTXF_*: none, a complete checksummed frame */
	uint16_t id;     /* echoed in the response */
	uint16_t size;   /* ... and is this long (within the page) */
};
struct netif_tx_response {
	uint16_t id;
	int16_t status;  /* NETIF_RSP_* */
};
struct netif_rx_request {
	uint16_t id;
	uint16_t pad;
	uint32_t gref;   /* a page the backend copies a received frame into */
};
struct netif_rx_response {
	uint16_t id;
	uint16_t offset; /* the frame starts here in the page */
	uint16_t flags;  /* NETRXF_* */
	int16_t status;  /* > 0: frame length; else NETIF_RSP_* */
};
#define NETIF_RSP_OKAY 0
#define NETRXF_more_data  4 /* only with feature-sg, which we don't offer */
#define NETRXF_extra_info 8 /* only with GSO, which we don't offer */

union netif_tx_entry { struct netif_tx_request req; struct netif_tx_response rsp; };
union netif_rx_entry { struct netif_rx_request req; struct netif_rx_response rsp; };

struct ring_header {
	uint32_t req_prod, req_event;
	uint32_t rsp_prod, rsp_event;
	uint8_t pad[48];
};
_Static_assert(sizeof(struct ring_header) == 64, "ring header");

#define NETIF_TX_RING_SIZE 256 /* (4096 - 64) / 12 rounded down to a power of 2 */
#define NETIF_RX_RING_SIZE 256 /* (4096 - 64) / 8, likewise */

struct netif_tx_sring {
	struct ring_header h;
	union netif_tx_entry ring[NETIF_TX_RING_SIZE];
};
struct netif_rx_sring {
	struct ring_header h;
	union netif_rx_entry ring[NETIF_RX_RING_SIZE];
};
_Static_assert(sizeof(struct netif_tx_request) == 12, "netif_tx_request");
_Static_assert(sizeof(struct netif_rx_response) == 8, "netif_rx_response");
_Static_assert(sizeof(struct netif_tx_sring) <= PAGE_SIZE, "tx ring");
_Static_assert(sizeof(struct netif_rx_sring) <= PAGE_SIZE, "rx ring");

/* --- Hypercall wrappers. Xen's debug builds overwrite the argument
 * registers a hypercall used, so every one is an in/out operand, and esi
 * and edi are clobbered too in case a future Xen widens that. */
extern char hypercall_page[PAGE_SIZE];

#define HYPERCALL2(nr, a1, a2) ({                                              \
	uint32_t _b = (uint32_t)(a1), _c = (uint32_t)(a2);                     \
	long _r;                                                               \
	__asm__ volatile("call hypercall_page + %c[off]"                       \
			 : "=a"(_r), "+b"(_b), "+c"(_c)                        \
			 : [off] "i"((nr) * 32)                                \
			 : "edx", "esi", "edi", "memory");                     \
	_r;                                                                    \
})

#define HYPERCALL3(nr, a1, a2, a3) ({                                          \
	uint32_t _b = (uint32_t)(a1), _c = (uint32_t)(a2), _d = (uint32_t)(a3);\
	long _r;                                                               \
	__asm__ volatile("call hypercall_page + %c[off]"                       \
			 : "=a"(_r), "+b"(_b), "+c"(_c), "+d"(_d)              \
			 : [off] "i"((nr) * 32)                                \
			 : "esi", "edi", "memory");                            \
	_r;                                                                    \
})

/* hypervisor.c */
extern int on_xen;
int xen_detect(void);
void xen_map_shared_info(void);
uint64_t xen_time(void);
int xen_get_param(uint32_t index, uint64_t *value);
void xen_set_timer(uint64_t deadline);
int xen_bind_virq_timer(uint32_t *port);
int evtchn_alloc_unbound(uint16_t remote_dom, uint32_t *port);
int evtchn_pending(uint32_t port);
void evtchn_clear(uint32_t port);
void evtchn_notify(uint32_t port);
void evtchn_wait(uint32_t port, uint64_t deadline);
void evtchn_wait_any(const uint32_t *ports, uint32_t n, uint64_t deadline);
int gnttab_init(void);
uint32_t gnttab_grant(uint16_t domid, const void *page, int readonly);
__attribute__((noreturn)) void xen_shutdown(uint32_t reason);
void *phys(uint64_t paddr, uint32_t len);
void idt_init(void);

/* console.c: PV console ring, else Xen's debug console, else (not on
 * Xen at all) COM1 */
void console_init(void);
void console_flush(void);

/* xenstore.c */
int xs_init(void);
int xs_read(const char *path, char *value, uint32_t max);
int xs_write(const char *path, const char *value);
uint32_t xs_watch(const char *path, const char *token);
int xs_watch_fired(void);

/* netfront.c: the first PV network device (device/vif/0) */
const char *netfront_init(uint8_t mac[6]); /* 0, or why not ("no vif") */
uint32_t netfront_port(void);
void netfront_transmit(const void *frame, unsigned len);
void netfront_poll(void (*deliver)(const void *frame, unsigned len));

/* Compiler barrier. Enough between ring accesses on x86, whose stores are
 * not reordered with stores nor loads with loads, and which does not move
 * a store before an earlier load; the one store->load order that matters
 * (clear a pending bit, then look at a ring) comes from a locked insn. */
#define barrier() __asm__ volatile("" ::: "memory")
/* Full barrier (store->load too), for the ring protocol's "publish my
 * index, then look at your event field" steps. A locked insn, as i686 has
 * no mfence. */
#define mb() __asm__ volatile("lock; addl $0, (%%esp)" ::: "memory", "cc")

#endif
