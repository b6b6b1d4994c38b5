/*
 * The network stack both kernels share (multiboot with virtio-net, Xen with
 * netfront): Ethernet, ARP, IPv4, ICMP echo replies and a TCP that serves
 * one connection at a time, carrying HTTP (http.h) for the image's files.
 *
 * The NIC driver owns the device and calls in; the stack calls out only
 * through the transmit function and the image reader given to net_init.
 * No interrupts, no allocation, one thread: the driver polls its device,
 * hands each received frame to net_input and calls net_tick often. Calls
 * must not overlap; net_init, net_input and net_tick may transmit.
 */
#ifndef HELLO_NET_H
#define HELLO_NET_H

#include <stdint.h>
#include "../ustar.h" /* tar_read_fn: int (*)(void *ctx, uint64_t n, unsigned char *buf) */

#define NET_MTU 1500       /* largest IPv4 packet sent or accepted */
#define NET_FRAME_MAX 1514 /* largest frame either way: 14-byte header + MTU, no FCS, no VLAN tag */

/* ip/gateway in host byte order; gateway 0 = none (only on-link peers get
 * replies); prefix 0..32; http_port is the TCP port served. version must
 * outlive the stack (net_init keeps the pointer). */
struct net_config {
	uint8_t mac[6];
	uint32_t ip, gateway;
	uint8_t prefix;
	uint16_t http_port;
	const char *version; /* answers GET /version (http.h); 0 or "": none */
};

/* The driver's transmit function: one complete Ethernet frame (no FCS),
 * 60 to NET_FRAME_MAX bytes (short frames come padded). The driver copies
 * it before returning (the stack reuses the buffer), or drops it when its
 * ring is full: TCP retransmits, the rest is best effort. */
typedef void (*net_transmit_fn)(const void *frame, unsigned len);

/* How the HTTP server reads the image: 512-byte block n into buf, 0 or -1
 * (ustar.h's tar_read_fn, the same reader tar_list is given).
 * Prints "hello: http: serving on A.B.C.D:PORT", announces us (gratuitous
 * ARP) and asks for the gateway's MAC. Call once, before the others. */
void net_init(const struct net_config *cfg, net_transmit_fn tx, tar_read_fn read_block, void *read_ctx);

/* The driver hands over each received frame (without FCS; the stack reads
 * it during the call only). Frames that are not for us are ignored. */
void net_input(const void *frame, unsigned len);

/* Called often (>= every 10 ms) for timers/retransmits. now_ms is any
 * millisecond clock that counts up (it may wrap). */
void net_tick(uint32_t now_ms);

/* The stop-serving-after knob: from now on TCP is ignored (SYNs are dropped
 * silently, no RST; an open connection gets nothing more), while ARP and
 * ping still answer. Prints "hello: http: stopped serving" (once, and only
 * after net_init). */
void net_stop_serving(void);

#endif
