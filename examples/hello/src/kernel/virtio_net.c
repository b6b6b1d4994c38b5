/*
 * virtio-net through the legacy interface over a PCI I/O BAR, which QEMU's
 * transitional virtio-net-pci (1af4:1000) offers on the default pc machine.
 * Polled: interrupts stay off (the device is told not to raise any), and
 * the main loop calls virtio_net_poll on every wake. Paging is off, so a
 * buffer's address is its physical address, as the device wants it.
 */
#include "kernel.h"
#include "../net/net.h"

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc

/* Legacy virtio registers, offsets into the I/O BAR. */
#define VIRTIO_DEVICE_FEATURES 0x00
#define VIRTIO_DRIVER_FEATURES 0x04
#define VIRTIO_QUEUE_PFN 0x08
#define VIRTIO_QUEUE_SIZE 0x0c
#define VIRTIO_QUEUE_SEL 0x0e
#define VIRTIO_QUEUE_NOTIFY 0x10
#define VIRTIO_STATUS 0x12
#define VIRTIO_NET_MAC 0x14 /* device config starts here while MSI-X is off */

#define STATUS_ACK 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4

#define F_NET_MAC (1u << 5)     /* the MAC in the device config is valid */
#define F_ANY_LAYOUT (1u << 27) /* header and frame may share a descriptor */

#define RXQ 0
#define TXQ 1
#define QMAX 256  /* largest queue we have room for (QEMU's default size) */
#define NBUF 32   /* buffers per direction; the rest of each queue stays unused */
#define HDR 10    /* struct virtio_net_hdr, all zero: no offloads negotiated */
#define BUF 2048  /* HDR + NET_FRAME_MAX fits */

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
#define DESC_WRITE 2 /* the device writes this buffer (receive) */

struct vring_avail {
	uint16_t flags, idx, ring[QMAX];
};
#define AVAIL_NO_INTERRUPT 1

struct vring_used {
	uint16_t flags, idx;
	struct {
		uint32_t id, len;
	} ring[QMAX];
};

/* A queue in the legacy layout: descriptors, then the available ring,
 * then at the next 4 KiB boundary the used ring. */
struct vq {
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	uint16_t size, used_seen;
};

static uint16_t io;
static struct vq rxq, txq;
static uint8_t tx_busy[NBUF]; /* handed to the device, not yet given back */
static uint8_t queue_mem[2][3 * 4096] __attribute__((aligned(4096)));
static uint8_t rx_buf[NBUF][BUF] __attribute__((aligned(16)));
static uint8_t tx_buf[NBUF][BUF] __attribute__((aligned(16)));

#define barrier() __asm__ volatile("" ::: "memory") /* x86 keeps stores in order; the compiler must too */

static void pci_select(uint32_t dev, uint32_t reg)
{
	outl(PCI_ADDR, 0x80000000u | dev << 11 | reg); /* bus 0, function 0 */
}

static int queue_init(uint16_t q, struct vq *vq, uint8_t *mem)
{
	uint32_t n;

	outw(io + VIRTIO_QUEUE_SEL, q);
	n = inw(io + VIRTIO_QUEUE_SIZE);
	if (n < NBUF || n > QMAX)
		return -1;
	vq->size = (uint16_t)n;
	vq->desc = (void *)mem;
	vq->avail = (void *)(mem + 16 * n);
	vq->used = (void *)(mem + ((16 * n + 6 + 2 * n + 4095) & ~4095u));
	vq->avail->flags = AVAIL_NO_INTERRUPT;
	outl(io + VIRTIO_QUEUE_PFN, (uint32_t)mem >> 12);
	return 0;
}

/* Offers buffer id (descriptor id, one each) to the device. */
static void queue_push(struct vq *vq, uint16_t id, void *buf, uint32_t len, uint16_t flags)
{
	vq->desc[id].addr = (uint32_t)buf;
	vq->desc[id].len = len;
	vq->desc[id].flags = flags;
	vq->avail->ring[vq->avail->idx % vq->size] = id;
	barrier(); /* the entry before the index that publishes it */
	vq->avail->idx++;
}

/* The first virtio-net on PCI bus 0: set it up, fill mac, 0; or -1. */
int virtio_net_init(uint8_t mac[6])
{
	uint32_t dev, features;

	for (dev = 0; dev < 32; dev++) {
		pci_select(dev, 0);
		if (inl(PCI_DATA) != (0x1000u << 16 | 0x1af4))
			continue;
		pci_select(dev, 0x10); /* BAR0: I/O space (bit 0) on a transitional device */
		io = (uint16_t)(inl(PCI_DATA) & 0xfffc);
		if (!io)
			continue;
		pci_select(dev, 0x04); /* command: I/O space and bus mastering (DMA) on */
		outw(PCI_DATA, inw(PCI_DATA) | 0x5);
		break;
	}
	if (dev == 32)
		return -1;

	outb(io + VIRTIO_STATUS, 0); /* reset */
	outb(io + VIRTIO_STATUS, STATUS_ACK | STATUS_DRIVER);
	features = inl(io + VIRTIO_DEVICE_FEATURES) & (F_NET_MAC | F_ANY_LAYOUT);
	outl(io + VIRTIO_DRIVER_FEATURES, features);
	if (queue_init(RXQ, &rxq, queue_mem[0]) < 0 || queue_init(TXQ, &txq, queue_mem[1]) < 0) {
		outb(io + VIRTIO_STATUS, 0x80); /* FAILED */
		return -1;
	}
	for (int i = 0; i < 6; i++) /* without F_NET_MAC, a fixed locally administered one */
		mac[i] = features & F_NET_MAC ? inb(io + VIRTIO_NET_MAC + i) : (uint8_t)"\2\0\0\0\0\1"[i];
	for (uint16_t i = 0; i < NBUF; i++)
		queue_push(&rxq, i, rx_buf[i], BUF, DESC_WRITE);
	outb(io + VIRTIO_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_DRIVER_OK);
	outw(io + VIRTIO_QUEUE_NOTIFY, RXQ);
	return 0;
}

/* Takes back the transmit buffers the device is done with. */
static void tx_reclaim(void)
{
	while (txq.used_seen != txq.used->idx) {
		barrier();
		tx_busy[txq.used->ring[txq.used_seen % txq.size].id % NBUF] = 0;
		txq.used_seen++;
	}
}

/* net_transmit_fn: copies the frame into a free buffer. With all of them
 * in flight, waits a little for the device, then drops the frame. */
void virtio_net_transmit(const void *frame, unsigned len)
{
	uint16_t i = NBUF;

	if (len > NET_FRAME_MAX)
		return;
	for (int tries = 0; tries < 100000 && i == NBUF; tries++) {
		tx_reclaim();
		for (i = 0; i < NBUF && tx_busy[i]; i++)
			;
	}
	if (i == NBUF)
		return;
	memset(tx_buf[i], 0, HDR);
	memcpy(tx_buf[i] + HDR, frame, len);
	tx_busy[i] = 1;
	queue_push(&txq, i, tx_buf[i], HDR + len, 0);
	outw(io + VIRTIO_QUEUE_NOTIFY, TXQ);
}

/* Hands every received frame to the stack (at most a queue's worth, so a
 * flood cannot keep us here) and offers its buffer again. */
void virtio_net_poll(void)
{
	int got = 0;

	while (rxq.used_seen != rxq.used->idx && got < NBUF) {
		uint32_t id, len;

		barrier();
		id = rxq.used->ring[rxq.used_seen % rxq.size].id % NBUF;
		len = rxq.used->ring[rxq.used_seen % rxq.size].len;
		rxq.used_seen++;
		if (len > HDR)
			net_input(rx_buf[id] + HDR, len - HDR);
		queue_push(&rxq, (uint16_t)id, rx_buf[id], BUF, DESC_WRITE);
		got++;
	}
	if (got)
		outw(io + VIRTIO_QUEUE_NOTIFY, RXQ);
}
