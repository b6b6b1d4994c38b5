/*
 * hello, arm64 build: the Linux arm64 Image header that U-Boot's `booti`
 * checks, then the entry. booti enters at the first byte with the MMU and
 * caches off, x0 = the device tree, at EL2 or EL1, wherever it placed us
 * (flags say "anywhere, 4K pages, little endian"), so the code is linked
 * position-independent and applies its own R_AARCH64_RELATIVE relocations
 * before touching any data.
 */
	.section .text.head, "ax"
	.globl _head
_head:
	b	start			/* code0 */
	.long	0			/* code1 */
	.quad	0			/* text_offset */
	.quad	_end - _head		/* image_size, bss included */
	.quad	0xa			/* flags */
	.quad	0, 0, 0			/* res2-res4 */
	.ascii	"ARM\x64"		/* magic */
	.long	0			/* res5 */

start:
	mov	x19, x0			/* the device tree */
	adr	x20, _head		/* where we run = link address 0 + this */
	/* Relocate: each Elf64_Rela is {offset, info, addend}; only RELATIVE
	 * (type 1027) is emitted for a static PIE. */
	adrp	x1, __rela_start
	add	x1, x1, :lo12:__rela_start
	adrp	x2, __rela_end
	add	x2, x2, :lo12:__rela_end
1:	cmp	x1, x2
	b.hs	2f
	ldp	x3, x4, [x1], #16	/* offset, info */
	ldr	x5, [x1], #8		/* addend */
	cmp	w4, #1027
	b.ne	1b
	add	x5, x5, x20
	str	x5, [x20, x3]
	b	1b
2:	/* Clear .bss (8-byte aligned by the linker script). */
	adrp	x1, __bss_start
	add	x1, x1, :lo12:__bss_start
	adrp	x2, __bss_end
	add	x2, x2, :lo12:__bss_end
3:	cmp	x1, x2
	b.hs	4f
	str	xzr, [x1], #8
	b	3b
4:	adrp	x1, __stack_top
	add	x1, x1, :lo12:__stack_top
	mov	sp, x1
	mov	x0, x19
	bl	rpi_main
5:	wfi
	b	5b
