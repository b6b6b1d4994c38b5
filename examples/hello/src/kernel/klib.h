/* What both kernels (multiboot and Xen PVH) share: no libc, so these. */
#ifndef HELLO_KLIB_H
#define HELLO_KLIB_H

#include <stdint.h>

/* kprintf.h: the printf, over each platform's putc */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* lib.c: what the compiler may call even in freestanding code */
void *memset(void *d, int c, uint32_t n);
void *memcpy(void *d, const void *s, uint32_t n);
int memcmp(const void *a, const void *b, uint32_t n);

#endif
