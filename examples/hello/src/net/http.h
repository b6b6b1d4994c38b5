/*
 * HTTP/1.0-style file server over the tar image, shared by the unix build
 * and the kernels' TCP (net.c): same requests, byte-identical responses.
 * No libc, no I/O of its own: the transport feeds in the request bytes and
 * pulls out the response at any offset (TCP retransmits from the middle).
 *
 *   GET /         the image's index.html
 *   GET /version  the version= boot argument and "\n", if one was given
 *                 (before any file of that name)
 *   GET /<path>   that regular file (stored as "<path>" or "./<path>")
 *   other paths   404, other methods 405, no request line 400
 *
 * Every response has Content-Length, Content-Type (text/html for .html,
 * text/plain otherwise) and Connection: close; the transport then closes.
 */
#ifndef HELLO_HTTP_H
#define HELLO_HTTP_H

#include <stdint.h>
#include "../ustar.h"

#define HTTP_REQUEST_MAX 1024 /* bytes of the request kept; the rest is read and dropped */
#define HTTP_VERSION_MAX 31   /* longest version served at GET /version */

struct http_response {
	char head[192];       /* status line and headers */
	uint32_t head_len;
	uint32_t body_len;
	const char *text;     /* body of an error or /version response, or 0: the file's */
	/* The /version body; text then points here, so a response is not
	 * copied once decided (both transports keep theirs in place). */
	char line[HTTP_VERSION_MAX + 2];
	uint64_t block;       /* the file's first data block in the image */
	tar_read_fn rd;
	void *rd_ctx;
};

/* 1 once req[0..len) holds a whole request head (ends in a blank line).
 * The transport also treats a full buffer or the client's FIN as the end. */
int http_request_done(const char *req, unsigned len);

/* Decides the response to req[0..len); returns its total length. version
 * (at most HTTP_VERSION_MAX characters, 0 or "" for none) answers /version. */
uint32_t http_respond(struct http_response *r, const char *req, unsigned len, const char *version,
		      tar_read_fn rd, void *rd_ctx);

/* Copies len bytes of the response from offset off into buf; 0, or -1 if
 * the image could not be read (the transport then gives up the connection). */
int http_read(const struct http_response *r, uint32_t off, void *buf, unsigned len);

#endif
