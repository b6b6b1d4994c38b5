/*
 * hello, kernel build: boots via multiboot (QEMU -kernel, or a bootloader
 * such as syslinux's mboot.c32 from a disk) and behaves like the unix build,
 * with the multiboot command line for argv, the first boot module or else
 * the IDE disk for the block device and the ACPI power button for SIGTERM.
 */
#include "kernel.h"
#include "../ustar.h"
#include "../net/net.h"

#define MB_BOOT_MAGIC 0x2badb002
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MODS (1u << 3)

struct multiboot_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
	/* further fields unused */
};

struct multiboot_module {
	uint32_t start, end, cmdline, reserved;
};

#include "knobs.h"

/* The first boot module, when a bootloader loaded the image into memory
 * (booted from a disk, the IDE disk is the boot disk, not the image). */
static struct tar_memory module;

static int read_block(void *ctx, uint64_t n, unsigned char *buf)
{
	(void)ctx;
	if (module.base)
		return tar_read_memory(&module, n, buf);
	return n >> 28 ? -1 : ata_read((uint32_t)n, buf); /* LBA28 limit */
}

static void print_file(void *ctx, const char *path, uint64_t size)
{
	(void)ctx;
	kprintf("hello: file %s (%llu bytes)\n", path, (unsigned long long)size);
}

/* Serve HTTP if --ipv4 says where and there is a NIC; 1 if serving. */
static int start_net(void)
{
	struct net_config cfg = { .ip = ipv4_addr, .gateway = ipv4_gateway, .prefix = (uint8_t)ipv4_prefix,
				  .http_port = (uint16_t)http_port, .version = app_version };

	if (ipv4_prefix < 0) {
		kprintf("hello: http: no --ipv4, not serving\n");
		return 0;
	}
	if (virtio_net_init(cfg.mac) < 0) {
		kprintf("hello: net: no virtio-net device, not serving\n");
		return 0;
	}
	net_init(&cfg, virtio_net_transmit, read_block, 0);
	return 1;
}

static __attribute__((noreturn)) void exit_failure(void)
{
	kprintf("hello: exiting with failure\n");
	/* QEMU's isa-debug-exit turns a write of v into exit status (v<<1)|1. */
	outb(0xf4, 1);
	halt_forever(); /* no debug-exit device: just stop */
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	const char *args = "";
	uint32_t beat = 0, next, flood_seq = 0;
	int serving;

	serial_init();

	/* Loaders put the kernel's own path first (QEMU: the -kernel argument,
	 * GRUB: the file name), like argv[0]; drop it so that only the
	 * -append text remains, matching the unix build's argv[1..]. */
	if (magic == MB_BOOT_MAGIC && (mbi->flags & MB_INFO_CMDLINE) && mbi->cmdline) {
		args = (const char *)mbi->cmdline;
		while (*args && *args != ' ')
			args++;
		if (*args == ' ')
			args++;
	}
	kprintf("hello: boot args: %s\n", args);
	parse_args(args);

	if (magic == MB_BOOT_MAGIC && (mbi->flags & MB_INFO_MODS) && mbi->mods_count) {
		const struct multiboot_module *mod = (const void *)mbi->mods_addr;

		module.base = (const unsigned char *)mod->start;
		module.size = mod->end - mod->start;
	}
	if (!module.base && ata_init() < 0)
		kprintf("hello: files: none attached\n");
	else
		kprintf("hello: files: %lu entries\n", (unsigned long)tar_list(read_block, print_file, 0));
	serving = start_net();

	if (acpi_init() < 0)
		kprintf("hello: no ACPI, power button disabled\n");
	cpu_init();

	next = ticks + HZ;
	for (;;) {
		if (flood) {
			poll_interrupts();
			kprintf("hello: flood %u %s\n", ++flood_seq, FLOOD_TEXT);
		} else {
			wait_for_tick();
		}
		if (serving) {
			virtio_net_poll();
			net_tick(ticks * (1000 / HZ));
		}

		if (acpi_power_button()) {
			if (ignore_stop) {
				kprintf("hello: ignoring stop request\n");
			} else {
				kprintf("hello: stopping (power button)\n");
				acpi_poweroff();
				halt_forever();
			}
		}
		/* Signed differences stay correct when the tick counter wraps. */
		if ((int32_t)(ticks - next) >= 0) {
			/* Stay on the one-second grid, but skip beats a stalled
			 * vCPU missed instead of bursting them out. */
			next += HZ;
			if ((int32_t)(ticks - next) >= 0)
				next = ticks + HZ;
			kprintf("hello: heartbeat %u\n", ++beat);
			if (exit_after && beat == exit_after)
				exit_failure();
			if (stop_serving_after && beat == stop_serving_after)
				net_stop_serving(); /* prints, if it was serving */
		}
	}
}
