/* GCC may emit calls to these even with -ffreestanding, and we link no libc. */
#include "kernel.h"

/* One string instruction each rather than a loop: a software KVM such as
 * kvm_pvm emulates this paging-off kernel instruction by instruction, and
 * a whole rep movs/stos is one of them (see README). */
void *memset(void *d, int c, uint32_t n)
{
	void *p = d;

	__asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory");
	return d;
}

void *memcpy(void *d, const void *s, uint32_t n)
{
	void *p = d;

	__asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
	return d;
}

int memcmp(const void *a, const void *b, uint32_t n)
{
	const unsigned char *p = a, *q = b;

	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}
