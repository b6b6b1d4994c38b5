/*
 * The kernels' printf (%s %c %u %lu %llu, and %x as 8 hex digits), header-only
 * so that the multiboot and the Xen kernel format every line the same way.
 * Include it once, after defining
 *	static void putc(char c);
 * which writes one byte to the platform's console.
 */
#ifndef HELLO_KPRINTF_H
#define HELLO_KPRINTF_H

#include <stdarg.h>
#include <stdint.h>

/* i386 has no 64-bit divide and we link without libgcc (whose 32-bit build
 * needs gcc-multilib), so divide by 10 in 16-bit limbs that cannot overflow. */
static char *u64_dec(uint64_t v, char *end)
{
	*--end = 0;
	do {
		uint32_t hi = (uint32_t)(v >> 32), lo = (uint32_t)v, r, mid, low;

		r = hi % 10;
		hi /= 10;
		mid = (r << 16) | (lo >> 16);
		r = mid % 10;
		mid /= 10;
		low = (r << 16) | (lo & 0xffff);
		r = low % 10;
		low /= 10;
		v = ((uint64_t)hi << 32) | (mid << 16) | low;
		*--end = (char)('0' + r);
	} while (v);
	return end;
}

void kprintf(const char *fmt, ...)
{
	char num[24];
	const char *s;
	va_list ap;
	int longs;

	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putc(*fmt);
			continue;
		}
		for (longs = 0; *++fmt == 'l';)
			longs++;
		switch (*fmt) {
		case 's':
			for (s = va_arg(ap, const char *); *s; s++)
				putc(*s);
			break;
		case 'c':
			putc((char)va_arg(ap, int));
			break;
		case 'u':
			s = u64_dec(longs == 2 ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int),
				    num + sizeof(num));
			while (*s)
				putc(*s++);
			break;
		case 'x': {
			uint32_t v = va_arg(ap, uint32_t);

			for (int sh = 28; sh >= 0; sh -= 4)
				putc("0123456789abcdef"[(v >> sh) & 15]);
			break;
		}
		default: /* "%%", or a lone '%' at the end */
			if (!*fmt) {
				fmt--;
				break;
			}
			putc(*fmt);
		}
	}
	va_end(ap);
}

#endif
