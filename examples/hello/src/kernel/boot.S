/*
 * Multiboot (v1) entry point and the interrupt stubs that cannot be C.
 * The loader leaves us in 32-bit protected mode with paging off, but the
 * GDT it used is not ours to rely on, so we load our own flat one first.
 */
#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0 /* an ELF kernel needs no extra loader features */

	.section .multiboot, "a"
	.balign 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

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
1:	mov $0x10, %cx
	mov %cx, %ds
	mov %cx, %es
	mov %cx, %fs
	mov %cx, %gs
	mov %cx, %ss
	mov $stack_top, %esp

	/* Zero .bss ourselves rather than trust every loader to. It holds the
	 * stack we are on, but nothing has been pushed yet. eax and ebx carry
	 * the multiboot magic and info pointer, so use edi/ecx/edx only. */
	mov %eax, %edx
	xor %eax, %eax
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	rep stosb
	mov %edx, %eax

	sub $8, %esp      /* keep the stack 16-byte aligned at the call */
	push %ebx         /* multiboot info */
	push %eax         /* multiboot magic */
	call kmain
	jmp halt

/*
 * Interrupt returns deliberately avoid iret. Some software KVMs (e.g.
 * kvm_pvm) emulate iret and fail on it in protected mode ("KVM internal
 * error ... emulation failure"). We never need iret: interrupts are enabled
 * only in the windows in cpu.c ("sti; hlt; cli", "sti; nop; cli"),
 * whose asm already treats flags as clobbered and expects interrupts
 * disabled again afterwards. So "ret $8" (pop EIP, drop CS and EFLAGS) is a
 * complete return, and IF stays 0 as the interrupt gate left it.
 */

/* Timer (IRQ0): count the tick and acknowledge the PIC; the main loop does
 * the rest after it wakes, so this stays tiny. */
	.globl irq0_stub
irq0_stub:
	push %eax
	incl ticks
	mov $0x20, %al
	outb %al, $0x20
	pop %eax
	ret $8

/* Every other PIC line is masked, so only spurious IRQ7 can reach this;
 * a spurious interrupt must not be acknowledged. */
	.globl irq_spurious_stub
irq_spurious_stub:
	ret $8

#include "fault_stubs.inc"

	.section .note.GNU-stack, "", @progbits
