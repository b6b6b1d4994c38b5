/*
 * Tar (ustar / GNU) walker shared by the unix and kernel builds.
 *
 * Header-only and libc-free so the freestanding kernel can include it too:
 * both builds then list an image identically by construction, and only the
 * "read block n" primitive differs (pread vs. ATA PIO). Not every includer
 * uses every function, hence TAR_FN (no "defined but not used" warnings).
 */
#ifndef HELLO_USTAR_H
#define HELLO_USTAR_H

#include <stdint.h>

#define TAR_BLOCK 512
#define TAR_PATH_MAX 256 /* longer names are truncated in the listing */
#define TAR_FN static __attribute__((unused))

/* Fill buf with 512-byte block n of the image; 0 on success, -1 past the end. */
typedef int (*tar_read_fn)(void *ctx, uint64_t n, unsigned char *buf);
/* Called once for every regular file, in archive order. */
typedef void (*tar_file_fn)(void *ctx, const char *path, uint64_t size);
/* The same for tar_walk, with the file's first data block; nonzero stops. */
typedef int (*tar_visit_fn)(void *ctx, const char *path, uint64_t size, uint64_t block);

/* Numeric fields are octal text, or base-256 binary (high bit of the first
 * byte set) when the value does not fit, as GNU tar and the Rust tar crate
 * write sizes over 8 GiB. */
TAR_FN uint64_t tar_num(const unsigned char *f, int len)
{
	uint64_t v = 0;
	int i = 0;

	if (f[0] & 0x80) {
		v = f[0] & 0x7f;
		for (i = 1; i < len; i++)
			v = (v << 8) | f[i];
		return v;
	}
	while (i < len && f[i] == ' ')
		i++;
	for (; i < len && f[i] >= '0' && f[i] <= '7'; i++)
		v = (v << 3) | (uint64_t)(f[i] - '0');
	return v;
}

/* The checksum is the byte sum of the header with its own field read as
 * spaces; checking it is what tells a header from padding or garbage. */
TAR_FN int tar_header_ok(const unsigned char *h)
{
	uint32_t sum = 0;
	int i, zero = 1;

	for (i = 0; i < TAR_BLOCK; i++) {
		sum += (i >= 148 && i < 156) ? ' ' : h[i];
		if (h[i])
			zero = 0;
	}
	return !zero && sum == tar_num(h + 148, 8);
}

/* Append at most max-1-*len bytes of a NUL-or-length-terminated field. */
TAR_FN void tar_append(char *dst, int *len, int max, const unsigned char *src, int n)
{
	int i;

	for (i = 0; i < n && src[i] && *len < max - 1; i++)
		dst[(*len)++] = (char)src[i];
	dst[*len] = 0;
}

/*
 * Walk the archive until the end-of-archive marker (a zero block; the second
 * one that normally follows is not needed), a block that is not a valid
 * header, the end of the image, or visit returning nonzero. Returns the
 * number of regular files visited.
 */
TAR_FN long tar_walk(tar_read_fn rd, void *ctx, tar_visit_fn visit, void *vctx)
{
	unsigned char h[TAR_BLOCK], d[TAR_BLOCK];
	char path[TAR_PATH_MAX];
	int len = 0, long_name = 0;
	uint64_t blk = 0, size, n;
	long count = 0;

	while (rd(ctx, blk, h) == 0 && tar_header_ok(h)) {
		size = tar_num(h + 124, 12);
		n = blk + 1;
		blk = n + ((size + TAR_BLOCK - 1) >> 9);

		/* GNU long name ('L'): its data is the path of the next entry.
		 * The Rust tar crate emits these for paths ustar cannot hold. */
		if (h[156] == 'L') {
			len = 0;
			path[0] = 0;
			for (; n < blk && len < TAR_PATH_MAX - 1; n++) {
				if (rd(ctx, n, d) != 0)
					return count;
				tar_append(path, &len, TAR_PATH_MAX, d, TAR_BLOCK);
			}
			long_name = 1;
			continue;
		}
		if (h[156] == '0' || h[156] == 0 || h[156] == '7') {
			if (!long_name) {
				len = 0;
				/* Only POSIX ustar has a prefix field; GNU headers
				 * ("ustar  ") keep timestamps there instead. */
				if (h[257] == 'u' && h[258] == 's' && h[259] == 't' &&
				    h[260] == 'a' && h[261] == 'r' && h[262] == 0 && h[345]) {
					tar_append(path, &len, TAR_PATH_MAX, h + 345, 155);
					tar_append(path, &len, TAR_PATH_MAX, (const unsigned char *)"/", 1);
				}
				tar_append(path, &len, TAR_PATH_MAX, h, 100);
			}
			count++;
			if (visit(vctx, path, size, n))
				return count;
		}
		long_name = 0;
	}
	return count;
}

/* An image already in memory (the kernels' boot modules), read as a tar_read_fn
 * with ctx = &struct tar_memory: only whole blocks, as unix's pread. */
struct tar_memory {
	const unsigned char *base;
	uint64_t size;
};

TAR_FN int tar_read_memory(void *ctx, uint64_t n, unsigned char *buf)
{
	const struct tar_memory *img = ctx;

	if (n >= img->size / TAR_BLOCK)
		return -1;
	for (int i = 0; i < TAR_BLOCK; i++)
		buf[i] = img->base[n * TAR_BLOCK + i];
	return 0;
}

struct tar_lister {
	tar_file_fn out;
	void *ctx;
};

TAR_FN int tar_list_one(void *l, const char *path, uint64_t size, uint64_t block)
{
	(void)block;
	((struct tar_lister *)l)->out(((struct tar_lister *)l)->ctx, path, size);
	return 0;
}

/* Calls out for every regular file; returns their number. */
TAR_FN long tar_list(tar_read_fn rd, tar_file_fn out, void *ctx)
{
	struct tar_lister l = { out, ctx };

	return tar_walk(rd, ctx, tar_list_one, &l);
}

struct tar_finder {
	const char *name;
	uint64_t size, block;
	int found;
};

TAR_FN int tar_find_one(void *f, const char *path, uint64_t size, uint64_t block)
{
	struct tar_finder *t = f;
	const char *a = path, *b = t->name;

	if (a[0] == '.' && a[1] == '/') /* GNU tar's "./x" is "x" too */
		a += 2;
	while (*a && *a == *b)
		a++, b++;
	if (*a || *b)
		return 0;
	t->size = size;
	t->block = block;
	return t->found = 1;
}

/* The first regular file stored as name or "./name": 0 with its size and
 * first data block, or -1 if there is none. */
TAR_FN int tar_find(tar_read_fn rd, void *ctx, const char *name, uint64_t *size, uint64_t *block)
{
	struct tar_finder t = { name, 0, 0, 0 };

	tar_walk(rd, ctx, tar_find_one, &t);
	*size = t.size;
	*block = t.block;
	return t.found ? 0 : -1;
}

/* len bytes at offset off of the file whose data starts at block: 0 or -1. */
TAR_FN int tar_read(tar_read_fn rd, void *ctx, uint64_t block, uint64_t off, void *buf, uint32_t len)
{
	unsigned char b[TAR_BLOCK], *out = buf;

	while (len) {
		uint32_t at = (uint32_t)(off & (TAR_BLOCK - 1)), n = TAR_BLOCK - at;

		if (n > len)
			n = len;
		if (rd(ctx, block + (off >> 9), b) != 0)
			return -1;
		__builtin_memcpy(out, b + at, n); /* a call to the platform's memcpy */
		out += n;
		off += n;
		len -= n;
	}
	return 0;
}

#endif
