/*
 * The knobs, parsed from the boot command line the same way by the
 * multiboot and the Xen kernel; the unix build hands each argv word to
 * parse_word. Header-only: include it once, in the file that acts on them.
 */
#ifndef HELLO_KNOBS_H
#define HELLO_KNOBS_H

#include <stdint.h>
#include "../net/http.h" /* HTTP_VERSION_MAX */

static int ignore_stop, flood;
/* What every `flood` line carries after its number: 248 characters. */
#define FLOOD_TEXT                                                             \
	"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"      \
	"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"      \
	"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"      \
	"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
static uint32_t exit_after, stop_serving_after;
/* --ipv4=A.B.C.D/P (host byte order; ipv4_prefix stays -1 without a valid
 * one), --ipv4-gateway=G (0: none), --http-port=N. */
static uint32_t ipv4_addr, ipv4_gateway;
static int ipv4_prefix = -1;
static uint32_t http_port = 80;
/* version=STRING, served at GET /version; "" without a valid one. */
static char app_version[HTTP_VERSION_MAX + 1];

static int word_is(const char *w, const char *end, const char *name)
{
	for (; w < end && *name; w++, name++)
		if (*w != *name)
			return 0;
	return w == end && !*name;
}

/* If [*w, end) starts with name, skips it and returns 1. */
static int word_starts(const char **w, const char *end, const char *name)
{
	const char *p = *w;

	for (; *name; p++, name++)
		if (p == end || *p != *name)
			return 0;
	*w = p;
	return 1;
}

/* A decimal number of 1 to 5 digits, at most max; returns the end of its
 * digits, or 0 if there are none or it is too big. */
static const char *parse_uint(const char *w, const char *end, uint32_t max, uint32_t *v)
{
	const char *start = w;

	for (*v = 0; w < end && *w >= '0' && *w <= '9' && w - start < 5; w++)
		*v = *v * 10 + (uint32_t)(*w - '0');
	return w == start || *v > max ? 0 : w;
}

/* Dotted-quad "A.B.C.D" into a host-order address; returns its end or 0. */
static const char *parse_ipv4(const char *w, const char *end, uint32_t *ip)
{
	uint32_t part;

	*ip = 0;
	for (int i = 0; i < 4; i++) {
		if (i && (w == end || *w++ != '.'))
			return 0;
		if (!(w = parse_uint(w, end, 255, &part)))
			return 0;
		*ip = *ip << 8 | part;
	}
	return w;
}

/* "A.B.C.D/P" (the --ipv4 value): 1 if well-formed, with P at most 32. */
static int parse_ipv4_prefix(const char *w, const char *end, uint32_t *ip, int *prefix)
{
	uint32_t a, p;

	if (!(w = parse_ipv4(w, end, &a)) || w == end || *w++ != '/' ||
	    !(w = parse_uint(w, end, 32, &p)) || w != end)
		return 0;
	*ip = a;
	*prefix = (int)p;
	return 1;
}

/* The version= value: 1 to HTTP_VERSION_MAX printable ASCII characters,
 * else ignored (an empty, too long or binary value is no version). */
static void parse_version(const char *v, const char *end)
{
	int n = 0;

	if (v == end || end - v > HTTP_VERSION_MAX)
		return;
	for (const char *p = v; p < end; p++)
		if (*p < ' ' || *p > '~')
			return;
	for (; v < end; v++)
		app_version[n++] = *v;
	app_version[n] = 0;
}

/* One word [w, end). Unknown and malformed words are ignored. */
static void parse_word(const char *w, const char *end)
{
	const char *v = w;
	uint32_t n;

	if (word_is(w, end, "ignore-stop"))
		ignore_stop = 1;
	else if (word_is(w, end, "flood"))
		flood = 1;
	else if (end - w > 11 && word_is(w, w + 11, "exit-after=")) {
		exit_after = 0;
		for (w += 11; w < end && *w >= '0' && *w <= '9'; w++)
			exit_after = exit_after * 10 + (uint32_t)(*w - '0');
	} else if (word_starts(&v, end, "stop-serving-after=")) {
		if (parse_uint(v, end, 99999, &n) == end)
			stop_serving_after = n;
	} else if (word_starts(&v, end, "--ipv4=")) {
		parse_ipv4_prefix(v, end, &ipv4_addr, &ipv4_prefix);
	} else if (word_starts(&v, end, "--ipv4-gateway=")) {
		if (parse_ipv4(v, end, &n) == end)
			ipv4_gateway = n;
	} else if (word_starts(&v, end, "--http-port=")) {
		if (parse_uint(v, end, 65535, &n) == end && n)
			http_port = n;
	} else if (word_starts(&v, end, "version=")) {
		parse_version(v, end);
	}
}

/* Knobs are whitespace-separated words, same names as the unix argv words
 * (unix has no command line to split: unused there). */
static __attribute__((unused)) void parse_args(const char *s)
{
	while (*s) {
		const char *end;

		while (*s == ' ')
			s++;
		for (end = s; *end && *end != ' '; end++)
			;
		parse_word(s, end);
		s = end;
	}
}

#endif
