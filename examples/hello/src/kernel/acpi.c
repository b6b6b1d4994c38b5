/*
 * ACPI fixed-feature power button and S5 soft-off, polled from the timer
 * loop (the SCI interrupt stays masked).
 *
 * The PM1 register blocks are taken from the FADT rather than from chipset
 * PCI registers: the FADT is where ACPI defines them, it also gives the
 * SMI_CMD/ACPI_ENABLE pair needed to switch the chipset into ACPI mode, and
 * it works on both QEMU's i440fx/PIIX4 "pc" and ICH9 "q35" machines.
 */
#include "kernel.h"

#define PWRBTN   (1u << 8)  /* PM1_STS.PWRBTN_STS and PM1_EN.PWRBTN_EN */
#define SCI_EN   (1u << 0)  /* PM1_CNT: ACPI mode */
#define SLP_EN   (1u << 13) /* PM1_CNT: enter the sleep state in SLP_TYP */
/* SLP_TYP for S5 really lives in the DSDT's \_S5 package (AML). Both of
 * QEMU's chipsets define it as 0, and QEMU's PM1_CNT handler treats type 0
 * as "power off", so hard-coding it spares us an AML interpreter. */
#define S5_TYP   0

static uint16_t pm1_sts, pm1_en, pm1_cnt;

/* Paging is off, so a physical address is a pointer. The empty asm hides
 * the constant from GCC, which otherwise warns about dereferencing it. */
static const uint8_t *phys(uint32_t addr)
{
	__asm__("" : "+r"(addr));
	return (const uint8_t *)addr;
}

static int checksum_ok(const uint8_t *p, uint32_t len)
{
	uint8_t sum = 0;

	while (len--)
		sum += *p++;
	return sum == 0;
}

static uint32_t le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The RSDP sits on a 16-byte boundary in the EBDA's first KiB (the BDA
 * word at 0x40e holds the EBDA segment) or in the BIOS area 0xe0000-0xfffff. */
static const uint8_t *find_rsdp(void)
{
	uint32_t ebda = (uint32_t)(phys(0x40e)[0] | phys(0x40e)[1] << 8) << 4;
	uint32_t ranges[2][2] = { { ebda, ebda + 1024 }, { 0xe0000, 0x100000 } };

	for (int r = 0; r < 2; r++) {
		if (!ranges[r][0])
			continue;
		for (uint32_t a = ranges[r][0]; a < ranges[r][1]; a += 16) {
			const uint8_t *p = phys(a);

			if (!memcmp(p, "RSD PTR ", 8) && checksum_ok(p, 20))
				return p;
		}
	}
	return 0;
}

static const uint8_t *find_fadt(void)
{
	const uint8_t *rsdp = find_rsdp(), *rsdt, *t;
	uint32_t n;

	if (!rsdp)
		return 0;
	/* The 32-bit RSDT exists in every ACPI version; the XSDT may not. */
	rsdt = phys(le32(rsdp + 16));
	if (memcmp(rsdt, "RSDT", 4) || !checksum_ok(rsdt, le32(rsdt + 4)))
		return 0;
	n = (le32(rsdt + 4) - 36) / 4;
	for (uint32_t i = 0; i < n; i++) {
		t = phys(le32(rsdt + 36 + 4 * i));
		if (!memcmp(t, "FACP", 4) && checksum_ok(t, le32(t + 4)))
			return t;
	}
	return 0;
}

/* Returns 0 when the power button is armed, -1 if there is no ACPI. */
int acpi_init(void)
{
	const uint8_t *fadt = find_fadt();
	uint32_t smi_cmd;
	uint8_t enable;

	if (!fadt)
		return -1;
	smi_cmd = le32(fadt + 48);
	enable = fadt[52];
	pm1_sts = (uint16_t)le32(fadt + 56);           /* PM1a_EVT_BLK */
	pm1_en = (uint16_t)(pm1_sts + fadt[88] / 2);   /* second half of it */
	pm1_cnt = (uint16_t)le32(fadt + 64);           /* PM1a_CNT_BLK */
	if (!pm1_sts || !pm1_cnt)
		return -1;

	/* Until the OS claims ACPI mode, firmware (SMM) may own power-button
	 * events. SMI_CMD == 0 means the machine is hardware-reduced or
	 * already in ACPI mode. */
	if (!(inw(pm1_cnt) & SCI_EN) && smi_cmd && enable) {
		outb((uint16_t)smi_cmd, enable);
		for (int i = 0; i < 1000000 && !(inw(pm1_cnt) & SCI_EN); i++)
			;
	}

	outw(pm1_sts, PWRBTN); /* write-1-to-clear any stale press */
	outw(pm1_en, (uint16_t)(inw(pm1_en) | PWRBTN));
	return 0;
}

/* Polled from the main loop; consumes the press so each one counts once. */
int acpi_power_button(void)
{
	if (!pm1_sts || !(inw(pm1_sts) & PWRBTN))
		return 0;
	outw(pm1_sts, PWRBTN);
	return 1;
}

void acpi_poweroff(void)
{
	if (pm1_cnt)
		outw(pm1_cnt, (uint16_t)((inw(pm1_cnt) & ~(7u << 10)) | S5_TYP << 10 | SLP_EN));
}
