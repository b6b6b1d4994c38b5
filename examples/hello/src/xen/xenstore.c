/*
 * A minimal xenstore client over the shared ring (HVM_PARAM_STORE_PFN and
 * _EVTCHN): one request at a time, no transactions, one watch. Requests
 * go into req[] at req_prod, replies come out of rsp[] at rsp_cons (both
 * rings 1024 bytes, free-running indexes); each message is a 16-byte
 * header {type, req_id, tx_id, len} and len payload bytes. Relative paths
 * are relative to the domain's home, /local/domain/<domid>.
 *
 * Watch events (XS_WATCH_EVENT) come into the same ring whenever xenstored
 * likes, and ring the same event channel. Only that they came matters
 * (there is one watch): a request skips them and notes it, and between
 * requests xs_watch_fired() consumes them.
 *
 * Each request has a deadline. If xenstored does not answer in time the
 * ring may be left mid-message, so the client gives up for good and says
 * so once; the kernel keeps running, without graceful stop.
 */
#include "xen.h"

#define XS_TIMEOUT_NS (5 * NSEC_PER_SEC)

static volatile struct xenstore_domain_interface *xs;
static uint32_t xs_port, xs_req_id;
static int broken, fired;

int xs_init(void)
{
	uint64_t pfn, port;

	if (xen_get_param(HVM_PARAM_STORE_PFN, &pfn) || !pfn ||
	    xen_get_param(HVM_PARAM_STORE_EVTCHN, &port))
		return -1;
	xs = phys(pfn * PAGE_SIZE, PAGE_SIZE);
	xs_port = (uint32_t)port;
	return xs ? 0 : -1;
}

static uint32_t len(const char *s)
{
	uint32_t n = 0;

	while (s[n])
		n++;
	return n;
}

static int send(const void *data, uint32_t n, uint64_t deadline)
{
	const char *p = data;

	while (n) {
		uint32_t prod, used, chunk;

		for (;;) {
			evtchn_clear(xs_port);
			prod = xs->req_prod;
			used = prod - xs->req_cons;
			if (used > XENSTORE_RING_SIZE)
				return -1; /* corrupt indexes */
			if (used < XENSTORE_RING_SIZE)
				break;
			if (xen_time() >= deadline)
				return -1;
			evtchn_wait(xs_port, deadline);
		}
		chunk = XENSTORE_RING_SIZE - used;
		if (chunk > XENSTORE_RING_SIZE - prod % XENSTORE_RING_SIZE)
			chunk = XENSTORE_RING_SIZE - prod % XENSTORE_RING_SIZE;
		if (chunk > n)
			chunk = n;
		for (uint32_t i = 0; i < chunk; i++)
			xs->req[(prod + i) % XENSTORE_RING_SIZE] = p[i];
		barrier(); /* the bytes before the index that publishes them */
		xs->req_prod = prod + chunk;
		evtchn_notify(xs_port);
		p += chunk;
		n -= chunk;
	}
	return 0;
}

/* Take n reply bytes into buf (NULL: discard them). */
static int recv(void *buf, uint32_t n, uint64_t deadline)
{
	char *p = buf;

	while (n) {
		uint32_t cons, avail, chunk;

		for (;;) {
			evtchn_clear(xs_port);
			cons = xs->rsp_cons;
			avail = xs->rsp_prod - cons;
			barrier(); /* the index before the bytes it covers */
			if (avail > XENSTORE_RING_SIZE)
				return -1; /* corrupt indexes */
			if (avail)
				break;
			if (xen_time() >= deadline)
				return -1;
			evtchn_wait(xs_port, deadline);
		}
		chunk = XENSTORE_RING_SIZE - cons % XENSTORE_RING_SIZE;
		if (chunk > avail)
			chunk = avail;
		if (chunk > n)
			chunk = n;
		if (p) {
			for (uint32_t i = 0; i < chunk; i++)
				p[i] = xs->rsp[(cons + i) % XENSTORE_RING_SIZE];
			p += chunk;
		}
		barrier(); /* done reading before the space is handed back */
		xs->rsp_cons = cons + chunk;
		evtchn_notify(xs_port);
		n -= chunk;
	}
	return 0;
}

static void give_up(void)
{
	broken = 1;
	kprintf("hello: xenstore: not responding, graceful stop disabled\n");
}

/*
 * One request: header, path with its NUL, then vlen bytes of value (XS_WRITE:
 * the value without a NUL; XS_WATCH: the token with one). The reply
 * payload, truncated to max - 1 bytes, goes to reply as a string. Returns
 * the reply's type (XS_ERROR: the payload is an errno name such as
 * "ENOENT"), or -1 if xenstore is unusable.
 */
static int request(uint32_t type, const char *path, const char *value, uint32_t vlen, char *reply, uint32_t max)
{
	uint32_t plen = len(path) + 1;
	struct xsd_sockmsg h = { .type = type, .req_id = ++xs_req_id, .tx_id = 0, .len = plen + vlen };
	uint64_t deadline;

	if (!xs || broken)
		return -1;
	deadline = xen_time() + XS_TIMEOUT_NS;
	if (send(&h, sizeof(h), deadline) || send(path, plen, deadline) || send(value, vlen, deadline))
		goto fail;
	for (;;) {
		uint32_t keep;

		if (recv(&h, sizeof(h), deadline) || h.len > XENSTORE_PAYLOAD_MAX)
			goto fail;
		/* Not ours (a stale reply, or a watch event): skip its payload. */
		if (h.req_id != xs_req_id || h.type == XS_WATCH_EVENT) {
			fired |= h.type == XS_WATCH_EVENT;
			if (recv(0, h.len, deadline))
				goto fail;
			continue;
		}
		keep = h.len < max - 1 ? h.len : max - 1;
		if (recv(reply, keep, deadline) || recv(0, h.len - keep, deadline))
			goto fail;
		reply[keep] = 0;
		return (int)h.type;
	}
fail:
	give_up();
	return -1;
}

/* 0 and the value (truncated to max - 1 bytes), or -1 (missing, error). */
int xs_read(const char *path, char *value, uint32_t max)
{
	return request(XS_READ, path, 0, 0, value, max) == XS_READ ? 0 : -1;
}

int xs_write(const char *path, const char *value)
{
	char reply[16];

	return request(XS_WRITE, path, value, len(value), reply, sizeof(reply)) == XS_WRITE ? 0 : -1;
}

/* Watch path (xenstored fires a watch once when it is set, then on every
 * change). Returns the event channel its events ring, or 0 if it failed. */
uint32_t xs_watch(const char *path, const char *token)
{
	char reply[16];

	if (request(XS_WATCH, path, token, len(token) + 1, reply, sizeof(reply)) != XS_WATCH)
		return 0;
	return xs_port;
}

/* Whether the watch fired since the last look: consumes what xenstored
 * sent since the last request (between requests, only events). */
int xs_watch_fired(void)
{
	int was;

	if (!xs || broken)
		return 0;
	evtchn_clear(xs_port);
	while (xs->rsp_prod != xs->rsp_cons) {
		uint64_t deadline = xen_time() + XS_TIMEOUT_NS;
		struct xsd_sockmsg h;

		if (recv(&h, sizeof(h), deadline) || h.len > XENSTORE_PAYLOAD_MAX || recv(0, h.len, deadline)) {
			give_up();
			return 0;
		}
		fired |= h.type == XS_WATCH_EVENT;
	}
	was = fired;
	fired = 0;
	return was;
}
