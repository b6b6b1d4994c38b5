/*
 * Primary-master ATA disk via PIO, LBA28: the simplest way to read the
 * attached image on QEMU's default "pc" machine (-drive ...,if=ide,index=0).
 * Interrupts stay off (nIEN); we poll the status register instead.
 */
#include "kernel.h"

#define ATA_DATA   0x1f0
#define ATA_COUNT  0x1f2
#define ATA_LBA0   0x1f3
#define ATA_LBA1   0x1f4
#define ATA_LBA2   0x1f5
#define ATA_DRIVE  0x1f6
#define ATA_STATUS 0x1f7 /* read */
#define ATA_CMD    0x1f7 /* write */
#define ATA_CTRL   0x3f6 /* write: device control; read: alternate status */

#define ST_ERR 0x01
#define ST_DRQ 0x08
#define ST_BSY 0x80

static uint32_t sectors; /* 0 = no usable disk */

/* Reading the alternate status 4 times gives the ~400 ns the drive needs
 * before its status reflects a newly written command or drive select. */
static void delay400(void)
{
	for (int i = 0; i < 4; i++)
		inb(ATA_CTRL);
}

/* Wait for BSY to clear, then for DRQ; -1 on error or timeout. */
static int wait_drq(void)
{
	uint8_t st = ST_BSY;

	for (int i = 0; i < 1000000 && (st & ST_BSY); i++)
		st = inb(ATA_STATUS);
	for (int i = 0; i < 1000000 && !(st & (ST_DRQ | ST_ERR)); i++)
		st = inb(ATA_STATUS);
	return (st & (ST_BSY | ST_ERR)) || !(st & ST_DRQ) ? -1 : 0;
}

static void read_words(void *buf)
{
	uint32_t n = 256;

	__asm__ volatile("rep insw" : "+D"(buf), "+c"(n) : "d"(ATA_DATA) : "memory");
}

/* IDENTIFY the primary master; returns its size in sectors, or -1 if there
 * is no ATA disk (empty channel, or an ATAPI device such as a CD-ROM). */
int ata_init(void)
{
	uint16_t id[256];

	outb(ATA_CTRL, 0x02); /* nIEN: no IRQ14, we poll */
	outb(ATA_DRIVE, 0xa0);
	delay400();
	if (inb(ATA_STATUS) == 0xff) /* floating bus: no controller/drive */
		return -1;
	outb(ATA_COUNT, 0);
	outb(ATA_LBA0, 0);
	outb(ATA_LBA1, 0);
	outb(ATA_LBA2, 0);
	outb(ATA_CMD, 0xec); /* IDENTIFY DEVICE */
	delay400();
	if (inb(ATA_STATUS) == 0) /* no device */
		return -1;
	for (int i = 0; i < 1000000 && (inb(ATA_STATUS) & ST_BSY); i++)
		;
	if (inb(ATA_LBA1) || inb(ATA_LBA2)) /* ATAPI/SATA signature */
		return -1;
	if (wait_drq() < 0)
		return -1;
	read_words(id);
	sectors = id[60] | (uint32_t)id[61] << 16; /* LBA28 capacity */
	return (int)sectors;
}

int ata_read(uint32_t lba, void *buf)
{
	if (lba >= sectors)
		return -1;
	outb(ATA_DRIVE, (uint8_t)(0xe0 | ((lba >> 24) & 0x0f)));
	delay400();
	outb(ATA_COUNT, 1);
	outb(ATA_LBA0, (uint8_t)lba);
	outb(ATA_LBA1, (uint8_t)(lba >> 8));
	outb(ATA_LBA2, (uint8_t)(lba >> 16));
	outb(ATA_CMD, 0x20); /* READ SECTORS */
	delay400();
	if (wait_drq() < 0)
		return -1;
	read_words(buf);
	return 0;
}
