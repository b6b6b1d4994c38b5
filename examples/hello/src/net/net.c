/*
 * The network stack (see net.h): just enough IPv4 to serve HTTP from one
 * address. Headers are packed structs in network byte order, converted
 * field by field with be16/be32. Every frame we send is built in out[].
 */
#include "net.h"
#include "http.h"
#include "../kernel/klib.h"

#define ETH_HLEN 14
#define ETH_IP 0x0800
#define ETH_ARP 0x0806
#define IP_HLEN 20
#define PROTO_ICMP 1
#define PROTO_TCP 6

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10

#define ARP_ENTRIES 8
#define TCP_MSS (NET_MTU - IP_HLEN - 20)
#define TCP_WINDOW 4096             /* advertised; bytes past the request are dropped anyway */
#define TCP_INFLIGHT (16 * TCP_MSS) /* most unacknowledged data we send, whatever the window */
#define TCP_RTO_MIN 300             /* ms before the first retransmission, doubling... */
#define TCP_RTO_MAX 3000            /* ...up to this */
#define TCP_IDLE_MAX 10000          /* ms without a segment from the peer before we give up */

struct eth {
	uint8_t dst[6], src[6];
	uint16_t type;
} __attribute__((packed));

struct arp {
	uint16_t htype, ptype;
	uint8_t hlen, plen;
	uint16_t op;
	uint8_t sha[6];
	uint32_t spa;
	uint8_t tha[6];
	uint32_t tpa;
} __attribute__((packed));

struct ip {
	uint8_t vhl, tos;
	uint16_t len, id, frag;
	uint8_t ttl, proto;
	uint16_t sum;
	uint32_t src, dst;
} __attribute__((packed));

struct tcp {
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t off, flags;
	uint16_t win, sum, urg;
} __attribute__((packed));

static inline uint16_t be16(uint16_t v) { return __builtin_bswap16(v); }
static inline uint32_t be32(uint32_t v) { return __builtin_bswap32(v); }
/* Sequence-number comparisons that survive wrapping. */
static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }

static struct net_config cfg;
static net_transmit_fn transmit;
static tar_read_fn image_rd;
static void *image_ctx;
static int up, serving;
static uint32_t now, ip_id, iss_seed;
static const uint8_t broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static uint8_t out[NET_FRAME_MAX]; /* the frame being built */

/* ---- Checksums: the ones' complement sum of big-endian 16-bit words ----
 * Summing little-endian words instead and swapping the folded result gives
 * the same (RFC 1071), and lets us add 32 bits at a time: half the turns
 * of the loop, which counts where the kernel's instructions are emulated
 * one by one (kvm_pvm, see README). */

static uint32_t sum_add(uint32_t s, const void *p, unsigned n)
{
	const uint8_t *b = p;
	uint32_t le = 0, w;

	for (; n >= 4; n -= 4, b += 4) {
		__builtin_memcpy(&w, b, 4); /* an unaligned load, inlined */
		le += (w & 0xffff) + (w >> 16); /* cannot overflow below 64 KiB */
	}
	for (; n >= 2; n -= 2, b += 2)
		le += (uint32_t)b[1] << 8 | b[0];
	if (n) /* an odd last byte is the high half of a big-endian word */
		le += b[0];
	while (le >> 16)
		le = (le & 0xffff) + (le >> 16);
	return s + be16((uint16_t)le);
}

static uint16_t sum_fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/* TCP's checksum covers a pseudo-header of addresses, protocol and length. */
static uint16_t tcp_sum(uint32_t src, uint32_t dst, const void *seg, unsigned len)
{
	uint32_t s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + PROTO_TCP + len;

	return sum_fold(sum_add(s, seg, len));
}

/* ---- Ethernet and ARP ---- */

static void eth_send(const uint8_t *dst, uint16_t type, uint8_t *frame, unsigned len)
{
	struct eth *e = (struct eth *)frame;

	memcpy(e->dst, dst, 6);
	memcpy(e->src, cfg.mac, 6);
	e->type = be16(type);
	for (; len < 60; len++) /* the Ethernet minimum, as a real NIC pads */
		frame[len] = 0;
	transmit(frame, len);
}

/* Neighbours' MACs, replaced round-robin; entries never expire, but a
 * neighbour that changes its MAC says so in its next ARP packet. */
static struct {
	uint32_t ip;
	uint8_t mac[6];
} arp_cache[ARP_ENTRIES];
static unsigned arp_victim;

/* One IPv4 frame waiting for its next hop's MAC (the latest one wins:
 * TCP retransmits whatever this drops). */
static uint8_t waiting[NET_FRAME_MAX];
static unsigned waiting_len;
static uint32_t waiting_hop;

static const uint8_t *arp_lookup(uint32_t ip)
{
	for (int i = 0; i < ARP_ENTRIES; i++)
		if (arp_cache[i].ip == ip && ip)
			return arp_cache[i].mac;
	return 0;
}

static void arp_send(uint16_t op, const uint8_t *dst_mac, uint32_t target_ip)
{
	uint8_t f[60];
	struct arp *a = (struct arp *)(f + ETH_HLEN);

	a->htype = be16(1);
	a->ptype = be16(ETH_IP);
	a->hlen = 6;
	a->plen = 4;
	a->op = be16(op);
	memcpy(a->sha, cfg.mac, 6);
	a->spa = be32(cfg.ip);
	if (op == 2)
		memcpy(a->tha, dst_mac, 6);
	else
		memset(a->tha, 0, 6); /* a request: that is what we ask for */
	a->tpa = be32(target_ip);
	eth_send(dst_mac, ETH_ARP, f, ETH_HLEN + sizeof(*a));
}

/* Remember ip's MAC: always if add, else only if we already knew ip
 * (RFC 826's merge). A frame that waited for this MAC goes out now. */
static void arp_learn(uint32_t ip, const uint8_t *mac, int add)
{
	int i;

	for (i = 0; i < ARP_ENTRIES && arp_cache[i].ip != ip; i++)
		;
	if (i == ARP_ENTRIES) {
		if (!add)
			return;
		i = (int)(arp_victim++ % ARP_ENTRIES);
		arp_cache[i].ip = ip;
	}
	memcpy(arp_cache[i].mac, mac, 6);
	if (waiting_len && waiting_hop == ip) {
		eth_send(mac, ETH_IP, waiting, waiting_len);
		waiting_len = 0;
	}
}

static void arp_input(const struct arp *a)
{
	uint32_t spa = be32(a->spa), tpa = be32(a->tpa);

	if (be16(a->htype) != 1 || be16(a->ptype) != ETH_IP || a->hlen != 6 || a->plen != 4 || !spa)
		return;
	arp_learn(spa, a->sha, tpa == cfg.ip);
	if (tpa == cfg.ip && be16(a->op) == 1)
		arp_send(2, a->sha, spa);
}

/* ---- IPv4 ---- */

static int on_link(uint32_t ip)
{
	uint32_t mask = cfg.prefix ? 0xffffffffu << (32 - cfg.prefix) : 0;

	return ((ip ^ cfg.ip) & mask) == 0;
}

/* Sends out[] with its len-byte IPv4 payload already in place, to the
 * next hop: the destination itself if on-link, else the gateway. */
static void ip_send(uint32_t dst, uint8_t proto, unsigned len)
{
	struct ip *h = (struct ip *)(out + ETH_HLEN);
	uint32_t hop = on_link(dst) ? dst : cfg.gateway;
	const uint8_t *mac;

	if (!hop)
		return; /* off-link, and no gateway */
	h->vhl = 0x45;
	h->tos = 0;
	h->len = be16((uint16_t)(IP_HLEN + len));
	h->id = be16((uint16_t)ip_id++);
	h->frag = be16(0x4000); /* don't fragment */
	h->ttl = 64;
	h->proto = proto;
	h->sum = 0;
	h->src = be32(cfg.ip);
	h->dst = be32(dst);
	h->sum = be16(sum_fold(sum_add(0, h, IP_HLEN)));
	len += ETH_HLEN + IP_HLEN;

	if ((mac = arp_lookup(hop))) {
		eth_send(mac, ETH_IP, out, len);
		return;
	}
	memcpy(waiting, out, len);
	waiting_len = len;
	waiting_hop = hop;
	arp_send(1, broadcast, hop);
}

/* Echo request in, echo reply out: the same message with type 0. */
static void icmp_input(uint32_t src, const uint8_t *msg, unsigned len)
{
	uint8_t *reply = out + ETH_HLEN + IP_HLEN;
	uint16_t sum;

	if (len < 8 || msg[0] != 8 || sum_fold(sum_add(0, msg, len)) || len > NET_MTU - IP_HLEN)
		return;
	memcpy(reply, msg, len);
	reply[0] = 0;
	reply[2] = reply[3] = 0;
	sum = sum_fold(sum_add(0, reply, len));
	reply[2] = (uint8_t)(sum >> 8);
	reply[3] = (uint8_t)sum;
	ip_send(src, PROTO_ICMP, len);
}

/* ---- TCP: one connection at a time, the server side only ----
 *
 * Our byte stream is the HTTP response: response byte i has sequence
 * number iss + 1 + i, and our FIN comes right after the last one. Lost
 * segments are sent again go-back-N style: on a timeout, nxt falls back
 * to una and everything from there goes out again.
 */

enum { CLOSED, SYN_RCVD, OPEN };

static struct {
	int state;
	uint32_t ip;                  /* the peer */
	uint16_t port;
	uint32_t iss, una, nxt, max;  /* ours: first, oldest unacked, next to send, highest sent */
	uint32_t rcv_nxt;             /* next sequence number expected from the peer */
	uint32_t wnd, mss;            /* the peer's window and segment size */
	int peer_fin;                 /* the peer's FIN is in (and acknowledged) */
	int responding;               /* resp and resp_len are set: the request is complete */
	uint32_t resp_len;
	uint32_t rto, rto_at;         /* retransmission timeout, and when it fires... */
	int timing;                   /* ...if set: while una != max */
	uint32_t heard;               /* when the peer last sent a segment */
	unsigned req_len;
	char req[HTTP_REQUEST_MAX];
	struct http_response resp;
} tcb;

/* Sends out[] with len data bytes already in place after a TCP header. */
static void tcp_emit(uint32_t ip, uint16_t rport, uint32_t seq, uint32_t ack, uint8_t flags, unsigned len)
{
	struct tcp *t = (struct tcp *)(out + ETH_HLEN + IP_HLEN);
	unsigned hlen = flags & TCP_SYN ? 24 : 20;

	t->sport = be16(cfg.http_port);
	t->dport = be16(rport);
	t->seq = be32(seq);
	t->ack = be32(ack);
	t->off = (uint8_t)(hlen / 4 << 4);
	t->flags = flags;
	t->win = be16(TCP_WINDOW);
	t->sum = 0;
	t->urg = 0;
	if (flags & TCP_SYN) { /* the MSS option: kind 2, length 4 */
		uint8_t *o = (uint8_t *)(t + 1);

		o[0] = 2;
		o[1] = 4;
		o[2] = TCP_MSS >> 8;
		o[3] = TCP_MSS & 0xff;
	}
	t->sum = be16(tcp_sum(cfg.ip, ip, t, hlen + len));
	ip_send(ip, PROTO_TCP, hlen + len);
}

/* A segment of the connection with len response bytes from seq. */
static int tcb_send(uint8_t flags, uint32_t seq, uint32_t len)
{
	uint8_t *data = out + ETH_HLEN + IP_HLEN + 20;

	if (len && http_read(&tcb.resp, seq - tcb.iss - 1, data, len) < 0)
		return -1;
	tcp_emit(tcb.ip, tcb.port, seq, tcb.rcv_nxt, flags, len);
	return 0;
}

static void tcb_close(int reset)
{
	if (reset)
		tcp_emit(tcb.ip, tcb.port, tcb.nxt, tcb.rcv_nxt, TCP_RST | TCP_ACK, 0);
	tcb.state = CLOSED;
}

/* Sends what may go out now: the SYN-ACK, or response data and our FIN
 * within the window. Returns the number of segments sent. */
static int tcp_output(void)
{
	uint32_t end = tcb.iss + 1 + tcb.resp_len, wnd, room, n;
	int sent = 0, fin;

	if (tcb.state == SYN_RCVD && tcb.nxt == tcb.iss) {
		tcb_send(TCP_SYN | TCP_ACK, tcb.iss, 0);
		tcb.nxt = tcb.iss + 1;
		sent++;
	}
	while (tcb.state == OPEN && tcb.responding && seq_le(tcb.nxt, end)) {
		wnd = tcb.wnd < TCP_INFLIGHT ? tcb.wnd : TCP_INFLIGHT;
		room = seq_lt(tcb.nxt, tcb.una + wnd) ? tcb.una + wnd - tcb.nxt : 0;
		n = end - tcb.nxt;
		if (n > tcb.mss)
			n = tcb.mss;
		if (n > room)
			n = room;
		if (!n && tcb.nxt != end)
			break; /* the window is full (our FIN alone needs none) */
		fin = tcb.nxt + n == end; /* the last data segment carries our FIN */
		if (tcb_send(TCP_ACK | (n ? TCP_PSH : 0) | (fin ? TCP_FIN : 0), tcb.nxt, n) < 0) {
			tcb_close(1); /* the image cannot be read: give up */
			return sent + 1;
		}
		tcb.nxt += n + (uint32_t)fin;
		sent++;
	}
	if (seq_lt(tcb.max, tcb.nxt))
		tcb.max = tcb.nxt;
	if (sent && tcb.una != tcb.max && !tcb.timing) {
		tcb.rto_at = now + tcb.rto;
		tcb.timing = 1;
	}
	return sent;
}

/* A SYN for our port while we are free: a new connection. */
static void tcp_accept(uint32_t src, const struct tcp *t, unsigned hlen)
{
	const uint8_t *o = (const uint8_t *)(t + 1), *end = (const uint8_t *)t + hlen;

	memset(&tcb, 0, sizeof(tcb));
	tcb.state = SYN_RCVD;
	tcb.ip = src;
	tcb.port = be16(t->sport);
	tcb.rcv_nxt = be32(t->seq) + 1;
	tcb.wnd = be16(t->win);
	tcb.mss = 536; /* the default when the SYN names none */
	while (o < end && *o) { /* options: find the MSS; kind 1 is a one-byte no-op */
		if (*o == 1) {
			o++;
			continue;
		}
		if (o + 1 >= end || o[1] < 2 || o + o[1] > end)
			break;
		if (o[0] == 2 && o[1] == 4)
			tcb.mss = (uint32_t)o[2] << 8 | o[3];
		o += o[1];
	}
	if (tcb.mss > TCP_MSS || tcb.mss < 64)
		tcb.mss = tcb.mss < 64 ? 64 : TCP_MSS;
	/* Not a secret ISN, only a different one for every connection. */
	iss_seed = iss_seed * 1103515245u + 12345u + now;
	tcb.iss = tcb.una = tcb.nxt = tcb.max = iss_seed;
	tcb.rto = TCP_RTO_MIN;
	tcb.heard = now;
	tcp_output();
}

static void tcp_input(uint32_t src, const uint8_t *seg, unsigned len)
{
	const struct tcp *t = (const struct tcp *)seg;
	unsigned hlen = (unsigned)(t->off >> 4) * 4, n;
	uint32_t seq, ack, fin_end, off;
	uint8_t fl;
	int need_ack;

	if (len < 20 || hlen < 20 || hlen > len || tcp_sum(src, cfg.ip, seg, len))
		return;
	if (!serving)
		return; /* stopped: no answer at all, not even a RST */
	fl = t->flags;
	seq = be32(t->seq);
	ack = be32(t->ack);
	n = len - hlen;

	if (tcb.state == CLOSED || src != tcb.ip || be16(t->sport) != tcb.port || be16(t->dport) != cfg.http_port) {
		/* Not our connection. Take a SYN for our port if we are free,
		 * or busy only waiting for the last one's FIN; drop it if busy
		 * (the client tries again); reset anything else. */
		fin_end = tcb.iss + 2 + tcb.resp_len;
		if ((fl & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN && be16(t->dport) == cfg.http_port) {
			/* (One we could not answer would only keep others out.) */
			if ((tcb.state == CLOSED || (tcb.responding && tcb.una == fin_end)) &&
			    (on_link(src) || cfg.gateway))
				tcp_accept(src, t, hlen);
		} else if (!(fl & TCP_RST)) {
			if (fl & TCP_ACK)
				tcp_emit(src, be16(t->sport), ack, 0, TCP_RST, 0);
			else
				tcp_emit(src, be16(t->sport), 0, seq + n + !!(fl & TCP_SYN) + !!(fl & TCP_FIN),
					 TCP_RST | TCP_ACK, 0);
		}
		return;
	}
	tcb.heard = now;

	if (fl & TCP_RST) { /* only from within the window: a blind one must guess */
		if (seq_le(tcb.rcv_nxt, seq) && seq_lt(seq, tcb.rcv_nxt + TCP_WINDOW))
			tcb.state = CLOSED;
		return;
	}
	if (fl & TCP_SYN) {
		if (tcb.state == SYN_RCVD) { /* it did not hear our SYN-ACK: again */
			tcb.nxt = tcb.iss;
			tcp_output();
		} else { /* RFC 5961's challenge ACK: tells a restarted peer where we are */
			tcb_send(TCP_ACK, tcb.nxt, 0);
		}
		return;
	}
	if (!(fl & TCP_ACK))
		return;

	/* What the peer acknowledges. */
	if (tcb.state == SYN_RCVD) {
		if (ack != tcb.iss + 1) {
			tcp_emit(src, tcb.port, ack, 0, TCP_RST, 0);
			return;
		}
		tcb.state = OPEN;
	}
	if (seq_lt(tcb.una, ack) && seq_le(ack, tcb.max)) {
		tcb.una = ack;
		if (seq_lt(tcb.nxt, ack))
			tcb.nxt = ack;
		tcb.rto = TCP_RTO_MIN;
		tcb.rto_at = now + tcb.rto;
		tcb.timing = tcb.una != tcb.max;
	}
	tcb.wnd = be16(t->win);

	/* What the peer sends: in order only; anything else gets a duplicate
	 * ACK so that it sends again from where we are. */
	need_ack = n || (fl & TCP_FIN);
	off = tcb.rcv_nxt - seq;
	if ((int32_t)off >= 0 && off <= n) {
		n -= off;
		if (!tcb.responding) {
			for (unsigned i = 0; i < n && tcb.req_len < HTTP_REQUEST_MAX; i++)
				tcb.req[tcb.req_len++] = (char)seg[hlen + off + i];
		}
		tcb.rcv_nxt += n;
		if ((fl & TCP_FIN) && !tcb.peer_fin) {
			tcb.rcv_nxt++;
			tcb.peer_fin = 1;
		}
	}

	if (!tcb.responding && (tcb.peer_fin || tcb.req_len == HTTP_REQUEST_MAX ||
				http_request_done(tcb.req, tcb.req_len))) {
		tcb.resp_len = http_respond(&tcb.resp, tcb.req, tcb.req_len, cfg.version, image_rd, image_ctx);
		tcb.responding = 1;
	}
	if (!tcp_output() && need_ack)
		tcb_send(TCP_ACK, tcb.nxt, 0);
	/* Done once both FINs are acknowledged. No TIME_WAIT: there is only
	 * one connection, and waiting would keep the next client out. */
	if (tcb.state == OPEN && tcb.peer_fin && tcb.responding && tcb.una == tcb.iss + 2 + tcb.resp_len)
		tcb.state = CLOSED;
}

/* ---- Frames in ---- */

static void ip_input(const uint8_t *p, unsigned len)
{
	const struct ip *h = (const struct ip *)p;
	unsigned hlen = (unsigned)(h->vhl & 15) * 4, total;

	if (len < IP_HLEN || h->vhl >> 4 != 4 || hlen < IP_HLEN || hlen > len)
		return;
	total = be16(h->len);
	if (total < hlen || total > len || sum_fold(sum_add(0, h, hlen)) || be32(h->dst) != cfg.ip)
		return;
	if (be16(h->frag) & 0x3fff)
		return; /* a fragment: we do not reassemble */
	if (h->proto == PROTO_ICMP)
		icmp_input(be32(h->src), p + hlen, total - hlen);
	else if (h->proto == PROTO_TCP)
		tcp_input(be32(h->src), p + hlen, total - hlen);
}

void net_input(const void *frame, unsigned len)
{
	const struct eth *e = frame;

	if (!up || len < ETH_HLEN || len > NET_FRAME_MAX)
		return;
	if (be16(e->type) == ETH_ARP && len >= ETH_HLEN + sizeof(struct arp))
		arp_input((const struct arp *)(e + 1));
	else if (be16(e->type) == ETH_IP)
		ip_input((const uint8_t *)(e + 1), len - ETH_HLEN);
}

void net_tick(uint32_t now_ms)
{
	now = now_ms;
	if (!up || tcb.state == CLOSED)
		return;
	if ((int32_t)(now - tcb.heard) > TCP_IDLE_MAX) {
		tcb_close(1);
		return;
	}
	if (tcb.timing && (int32_t)(now - tcb.rto_at) >= 0) {
		tcb.nxt = tcb.una; /* go back: send everything unacknowledged again */
		tcb.rto = tcb.rto * 2 > TCP_RTO_MAX ? TCP_RTO_MAX : tcb.rto * 2;
		tcb.timing = 0;
		tcp_output();
	}
}

void net_init(const struct net_config *c, net_transmit_fn tx, tar_read_fn read_block, void *read_ctx)
{
	cfg = *c;
	transmit = tx;
	image_rd = read_block;
	image_ctx = read_ctx;
	for (int i = 0; i < 6; i++)
		iss_seed = iss_seed << 5 ^ cfg.mac[i];
	up = serving = 1;
	kprintf("hello: http: serving on %u.%u.%u.%u:%u\n", cfg.ip >> 24, cfg.ip >> 16 & 255,
		cfg.ip >> 8 & 255, cfg.ip & 255, (unsigned)cfg.http_port);
	arp_send(1, broadcast, cfg.ip); /* gratuitous: here we are */
	if (cfg.gateway)
		arp_send(1, broadcast, cfg.gateway);
}

void net_stop_serving(void)
{
	if (!serving)
		return;
	serving = 0;
	tcb.state = CLOSED; /* silently: the client hears nothing more */
	kprintf("hello: http: stopped serving\n");
}
