/*
 * netfront: the guest half of Xen's PV network device (io/netif.h) for the
 * first vif, device/vif/0, polled from the main loop (no interrupts).
 *
 * Setup, in xenstore (paths relative to our home, /local/domain/<domid>):
 * the toolstack wrote device/vif/0/{backend,backend-id,mac}, and the
 * backend (netback in dom0) publishes its state under the backend path.
 * We grant the backend two ring pages and our buffers, allocate an event
 * channel it can bind, write the ring refs, the port and the features we
 * need, switch our state to Connected (4) and wait until the backend's is
 * Connected too.
 *
 * Data: frames are copied both ways. RX: RX_BUFS whole pages are posted on
 * the RX ring (request-rx-copy: netback copies each received frame into
 * one) and re-posted as soon as their frame has been handed over. TX: a
 * frame is copied into one of TX_BUFS granted pages, and the page returns
 * to the pool when the backend's response comes. Notifications follow the
 * ring protocol (io/ring.h): we notify only when the backend asked for it
 * through req_event, and set rsp_event so that it notifies us, which wakes
 * the main loop from SCHEDOP_poll.
 *
 * No scatter-gather, GSO or checksum offload is negotiated, so every frame
 * is one slot and one complete Ethernet frame with valid checksums. Grants
 * and the event channel are never taken back: the device lives as long as
 * the domain, and the toolstack tears the backend down with it.
 */
#include "xen.h"

#define RX_BUFS 64
#define TX_BUFS 32
#define FRAME_MAX 1514 /* MTU 1500 plus the Ethernet header; no FCS */
#define CONNECT_TIMEOUT_NS (10 * NSEC_PER_SEC)
#define XENBUS_INITWAIT  2
#define XENBUS_CONNECTED 4

/* Whole pages: the backend maps (rings) or copies into (buffers) a page,
 * so nothing else may share one. */
static union { struct netif_tx_sring s; char page[PAGE_SIZE]; } tx_page __attribute__((aligned(PAGE_SIZE)));
static union { struct netif_rx_sring s; char page[PAGE_SIZE]; } rx_page __attribute__((aligned(PAGE_SIZE)));
static unsigned char rx_buf[RX_BUFS][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static unsigned char tx_buf[TX_BUFS][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static volatile struct netif_tx_sring *tx = &tx_page.s;
static volatile struct netif_rx_sring *rx = &rx_page.s;
static uint32_t rx_gref[RX_BUFS], tx_gref[TX_BUFS];
static uint32_t tx_prod, tx_cons, rx_prod, rx_cons; /* our private indexes */
static uint16_t tx_free[TX_BUFS], tx_nfree;          /* ids of idle TX pages */
static uint8_t tx_busy[TX_BUFS];
static uint32_t port;
static int connected;

/* --- strings, without libc */
static uint32_t slen(const char *s)
{
	uint32_t n = 0;

	while (s[n])
		n++;
	return n;
}

/* dst = a b, truncated to max - 1 bytes */
static void join(char *dst, uint32_t max, const char *a, const char *b)
{
	uint32_t n = 0;

	for (; *a && n < max - 1; a++)
		dst[n++] = *a;
	for (; *b && n < max - 1; b++)
		dst[n++] = *b;
	dst[n] = 0;
}

static const char *dec(uint32_t v, char buf[11])
{
	char *p = buf + 10;

	*p = 0;
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	return p;
}

/* -1 unless s is all decimal digits (and fits in 16 bits) */
static int parse_u16(const char *s)
{
	uint32_t v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || (v = v * 10 + (uint32_t)(*s - '0')) > 0xffff)
			return -1;
	}
	return (int)v;
}

static int hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "00:16:3e:12:34:56", as libxl writes it */
static int parse_mac(const char *s, uint8_t mac[6])
{
	if (slen(s) != 17)
		return -1;
	for (int i = 0; i < 6; i++, s += 3) {
		int hi = hex(s[0]), lo = hex(s[1]);

		if (hi < 0 || lo < 0 || (i < 5 && s[2] != ':'))
			return -1;
		mac[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* The backend's state (XenbusState*), -1 if unreadable. */
static int backend_state(const char *backend)
{
	char path[128], value[16];

	join(path, sizeof(path), backend, "/state");
	return xs_read(path, value, sizeof(value)) < 0 ? -1 : parse_u16(value);
}

/* Poll the backend's state every 10 ms until it is `want` or beyond, or
 * it is Closing/Closed (5, 6), or the deadline passes. Returns the last
 * state read. (A xenstore watch would save the polling, but this runs
 * once, for well under a second.) */
static int wait_backend(const char *backend, int want, uint64_t deadline)
{
	int state;

	for (;;) {
		state = backend_state(backend);
		if (state >= want || (int64_t)(xen_time() - deadline) >= 0)
			return state;
		evtchn_clear(port);
		evtchn_wait(port, xen_time() + NSEC_PER_SEC / 100);
	}
}

/* Publish our new request producer index, then notify the backend if it
 * asked to be told about requests up to one we just added (req_event). */
static void push_requests(volatile struct ring_header *h, uint32_t prod)
{
	uint32_t old = h->req_prod;

	barrier(); /* the requests before the index that publishes them */
	h->req_prod = prod;
	mb(); /* the index before we read req_event */
	if ((uint32_t)(prod - h->req_event) < (uint32_t)(prod - old))
		evtchn_notify(port);
}

static void post_rx(uint16_t id)
{
	volatile struct netif_rx_request *req = &rx->ring[rx_prod++ % NETIF_RX_RING_SIZE].req;

	req->id = id;
	req->gref = rx_gref[id];
}

/* Ask for a notification at the next response, then check whether one
 * came in meanwhile (which would not be notified): 1 if so. */
static int responses_after_event(volatile struct ring_header *h, uint32_t cons)
{
	h->rsp_event = cons + 1;
	mb(); /* rsp_event before reading rsp_prod again */
	return h->rsp_prod != cons;
}

/* Return the pages of sent frames to the pool. */
static void reap_tx(void)
{
	do {
		uint32_t prod = tx->h.rsp_prod;

		barrier(); /* the index before the responses it covers */
		for (; tx_cons != prod; tx_cons++) {
			uint16_t id = tx->ring[tx_cons % NETIF_TX_RING_SIZE].rsp.id;

			if (id < TX_BUFS && tx_busy[id]) {
				tx_busy[id] = 0;
				tx_free[tx_nfree++] = id;
			}
		}
	} while (responses_after_event(&tx->h, tx_cons));
}

/* Connects device/vif/0 and fills in its MAC. Returns 0, or why not (for
 * "hello: net: <why>, not serving"). */
const char *netfront_init(uint8_t mac[6])
{
	static char why[64];
	char backend[96], path[128], value[32], num[11];
	uint32_t tx_ref, rx_ref;
	int backend_id, state;
	uint64_t deadline = xen_time() + CONNECT_TIMEOUT_NS;

	if (xs_read("device/vif/0/backend", backend, sizeof(backend)) < 0)
		return "no vif";
	if (xs_read("device/vif/0/backend-id", value, sizeof(value)) < 0 ||
	    (backend_id = parse_u16(value)) < 0) {
		return "vif 0 has no backend-id";
	}
	if (xs_read("device/vif/0/mac", value, sizeof(value)) < 0 || parse_mac(value, mac) < 0) {
		return "vif 0 has no mac";
	}
	join(path, sizeof(path), backend, "/feature-rx-copy");
	if (xs_read(path, value, sizeof(value)) < 0 || parse_u16(value) != 1) {
		return "vif 0: the backend has no feature-rx-copy";
	}
	if (gnttab_init() < 0) {
		return "cannot map the grant table";
	}
	if (evtchn_alloc_unbound((uint16_t)backend_id, &port) < 0) {
		return "cannot allocate an event channel";
	}

	/* Empty rings (both event fields 1: "notify me at the first one"),
	 * every page granted, every RX page posted. */
	tx->h.req_event = tx->h.rsp_event = 1;
	rx->h.req_event = rx->h.rsp_event = 1;
	tx_ref = gnttab_grant((uint16_t)backend_id, tx_page.page, 0);
	rx_ref = gnttab_grant((uint16_t)backend_id, rx_page.page, 0);
	for (uint16_t i = 0; i < RX_BUFS; i++)
		rx_gref[i] = gnttab_grant((uint16_t)backend_id, rx_buf[i], 0);
	for (uint16_t i = 0; i < TX_BUFS; i++) {
		tx_gref[i] = gnttab_grant((uint16_t)backend_id, tx_buf[i], 1);
		tx_free[tx_nfree++] = i;
	}
	if (!tx_ref || !rx_ref || !rx_gref[RX_BUFS - 1] || !tx_gref[TX_BUFS - 1]) {
		return "out of grant entries";
	}
	for (uint16_t i = 0; i < RX_BUFS; i++)
		post_rx(i);
	barrier();
	rx->h.req_prod = rx_prod;

	/* netback is ready for us once it is in InitWait (it normally is by
	 * the time the toolstack unpauses us). */
	state = wait_backend(backend, XENBUS_INITWAIT, deadline);
	if (state != XENBUS_INITWAIT && state != XENBUS_CONNECTED) {
		join(why, sizeof(why), "vif 0: backend not ready, state ", state < 0 ? "?" : dec((uint32_t)state, num));
		return why;
	}
	/* request-rx-copy and feature-rx-notify are mandatory for Linux's
	 * netback. feature-no-csum-offload: without it netback would hand us
	 * dom0's locally made TCP segments with the checksum still blank
	 * (NETRXF_csum_blank), which the shared stack does not handle. */
	if (xs_write("device/vif/0/tx-ring-ref", dec(tx_ref, num)) < 0 ||
	    xs_write("device/vif/0/rx-ring-ref", dec(rx_ref, num)) < 0 ||
	    xs_write("device/vif/0/event-channel", dec(port, num)) < 0 ||
	    xs_write("device/vif/0/request-rx-copy", "1") < 0 ||
	    xs_write("device/vif/0/feature-rx-notify", "1") < 0 ||
	    xs_write("device/vif/0/feature-no-csum-offload", "1") < 0 ||
	    xs_write("device/vif/0/state", "4") < 0) {
		return "vif 0: cannot write to xenstore";
	}
	state = wait_backend(backend, XENBUS_CONNECTED, deadline);
	if (state != XENBUS_CONNECTED) {
		join(why, sizeof(why), "vif 0: backend did not connect, state ", state < 0 ? "?" : dec((uint32_t)state, num));
		return why;
	}
	connected = 1;
	return 0;
}

uint32_t netfront_port(void)
{
	return port;
}

/* One complete Ethernet frame. Dropped (as a NIC with a full queue would)
 * when all TX pages are still with the backend: TCP sends it again. */
void netfront_transmit(const void *frame, unsigned len)
{
	volatile struct netif_tx_request *req;
	uint16_t id;

	if (!connected || len < 14 || len > FRAME_MAX)
		return;
	if (!tx_nfree)
		reap_tx();
	if (!tx_nfree)
		return;
	id = tx_free[--tx_nfree];
	tx_busy[id] = 1;
	memcpy(tx_buf[id], frame, len);
	req = &tx->ring[tx_prod++ % NETIF_TX_RING_SIZE].req;
	req->gref = tx_gref[id];
	req->offset = 0;
	req->flags = 0; /* checksums are filled in, nothing follows */
	req->id = id;
	req->size = (uint16_t)len;
	push_requests(&tx->h, tx_prod);
}

/* Hand every received frame to deliver, re-post its page, and free the
 * pages of sent frames. Clears the event channel first, so a notification
 * that comes after the last look sets it again and ends the next sleep. */
void netfront_poll(void (*deliver)(const void *frame, unsigned len))
{
	if (!connected)
		return;
	evtchn_clear(port);
	reap_tx();
	do {
		uint32_t prod = rx->h.rsp_prod;

		barrier(); /* the index before the responses it covers */
		for (; rx_cons != prod; rx_cons++) {
			struct netif_rx_response rsp;

			rsp.id = rx->ring[rx_cons % NETIF_RX_RING_SIZE].rsp.id;
			rsp.offset = rx->ring[rx_cons % NETIF_RX_RING_SIZE].rsp.offset;
			rsp.flags = rx->ring[rx_cons % NETIF_RX_RING_SIZE].rsp.flags;
			rsp.status = rx->ring[rx_cons % NETIF_RX_RING_SIZE].rsp.status;
			if (rsp.id >= RX_BUFS)
				continue; /* not one of ours */
			/* Errors, and the multi-slot forms we never asked for,
			 * are dropped. */
			if (rsp.status > 0 && !(rsp.flags & (NETRXF_more_data | NETRXF_extra_info)) &&
			    rsp.offset + (uint32_t)rsp.status <= PAGE_SIZE)
				deliver(rx_buf[rsp.id] + rsp.offset, (unsigned)rsp.status);
			post_rx(rsp.id);
		}
		push_requests(&rx->h, rx_prod);
	} while (responses_after_event(&rx->h, rx_cons));
}
