/*
 * The knobs, parsed from the boot command line the same way by the
 * multiboot and the Xen kernel (the unix build reads the same words from
 * argv). Header-only: include it once, in the file that acts on them.
 */
#ifndef HELLO_KNOBS_H
#define HELLO_KNOBS_H

#include <stdint.h>

static int ignore_stop, flood;
static uint32_t exit_after;

static int word_is(const char *w, const char *end, const char *name)
{
	for (; w < end && *name; w++, name++)
		if (*w != *name)
			return 0;
	return w == end && !*name;
}

/* Knobs are whitespace-separated words, same names as the unix argv words. */
static void parse_args(const char *s)
{
	while (*s) {
		const char *w, *end;

		while (*s == ' ')
			s++;
		for (w = end = s; *end && *end != ' '; end++)
			;
		if (word_is(w, end, "ignore-stop"))
			ignore_stop = 1;
		else if (word_is(w, end, "flood"))
			flood = 1;
		else if (end - w > 11 && word_is(w, w + 11, "exit-after=")) {
			exit_after = 0;
			for (w += 11; w < end && *w >= '0' && *w <= '9'; w++)
				exit_after = exit_after * 10 + (uint32_t)(*w - '0');
		}
		s = end;
	}
}

#endif
