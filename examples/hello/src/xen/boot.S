/*
 * Xen PVH entry point, the ELF notes that make the domain builder use it,
 * the pages Xen fills in, and the CPU exception stubs.
 *
 * PVH boot ABI (Xen docs/misc/pvh.pandoc): entered at the PHYS32_ENTRY
 * address in 32-bit protected mode, paging off, flat 4 GiB cs/ds/es/ss
 * (selector values unspecified), interrupts off, %ebx = physical address
 * of struct hvm_start_info; no stack, and the GDT/IDT are ours to set up.
 */
#define XEN_ELFNOTE_XEN_VERSION    5
#define XEN_ELFNOTE_GUEST_OS       6
#define XEN_ELFNOTE_GUEST_VERSION  7
#define XEN_ELFNOTE_PHYS32_ENTRY  18

/* An ELF note owned by "Xen": namesz, descsz, type, name, desc, each
 * padded to 4 bytes. */
.macro xen_note type, desc:vararg
	.balign 4
	.long 4, 2f - 1f, \type
	.asciz "Xen"
1:	\desc
2:	.balign 4
.endm

	/* Linked into a PT_NOTE segment (xen.ld), where libxenguest's ELF
	 * loader looks for them. With PHYS32_ENTRY present a PVH (HVM
	 * container) build needs no other note; the rest are informational.
	 * There is deliberately no LOADER ("generic") note: it is what lets
	 * the *PV* builder accept an image, and this kernel cannot run PV, so
	 * type = "pv" now fails at load time with a clear error instead. */
	.section .note.Xen, "a", @note
	xen_note XEN_ELFNOTE_PHYS32_ENTRY, .long _start
	xen_note XEN_ELFNOTE_GUEST_OS, .asciz "hello"
	xen_note XEN_ELFNOTE_GUEST_VERSION, .asciz "0.1.0"
	xen_note XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0"

	.section .rodata
	.balign 8
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff /* 0x08: code, base 0, 4 GiB, 32-bit */
	.quad 0x00cf92000000ffff /* 0x10: data, base 0, 4 GiB */
gdt_ptr:
	.word gdt_ptr - gdt - 1
	.long gdt

	.bss
	/* Page-aligned: Xen writes the hypercall stubs into the first page
	 * (cpuid/wrmsr in hypervisor.c), and the second is the frame that
	 * XENMEM_add_to_physmap replaces with the shared_info page. */
	.balign 4096
	.globl hypercall_page, shared_info_page
hypercall_page:
	.skip 4096
shared_info_page:
	.skip 4096
	.balign 16
stack:
	.skip 16384
stack_top:

	.text
	.globl _start
_start:
	cli
	cld
	lgdt gdt_ptr
	ljmp $0x08, $1f
1:	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %fs
	mov %ax, %gs
	mov %ax, %ss
	mov $stack_top, %esp

	/* Zero .bss (the domain builder hands over zeroed memory, but QEMU's
	 * PVH loader need not). %ebx holds the start_info pointer. */
	xor %eax, %eax
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	rep stosb

	sub $12, %esp     /* keep the stack 16-byte aligned at the call */
	push %ebx         /* struct hvm_start_info * */
	call xen_main
	jmp halt

#include "../kernel/fault_stubs.inc"

	.section .note.GNU-stack, "", @progbits
