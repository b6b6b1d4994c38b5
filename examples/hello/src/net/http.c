/*
 * The HTTP file server (see http.h). Freestanding: it is compiled into the
 * unix build as well as the kernels, so it calls nothing but ustar.h.
 */
#include "http.h"

static const char *const not_found = "not found\n", *const bad_method = "method not allowed\n",
		  *const bad_request = "bad request\n";

int http_request_done(const char *req, unsigned len)
{
	for (unsigned i = 1; i < len; i++)
		if (req[i] == '\n' && (req[i - 1] == '\n' || (i > 1 && req[i - 1] == '\r' && req[i - 2] == '\n')))
			return 1;
	return 0;
}

/* Appends s to the head; the head has room for everything we put in it. */
static void put(struct http_response *r, const char *s)
{
	while (*s && r->head_len < sizeof(r->head))
		r->head[r->head_len++] = *s++;
}

static void put_uint(struct http_response *r, uint32_t v)
{
	char num[11], *p = num + sizeof(num);

	*--p = 0;
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	put(r, p);
}

static uint32_t text_len(const char *s)
{
	uint32_t n = 0;

	while (s[n])
		n++;
	return n;
}

static int text_is(const char *s, const char *t)
{
	for (; *s && *s == *t; s++, t++)
		;
	return *s == *t;
}

/* The request line's method and path: "GET /x?q HTTP/1.1" gives "GET" and
 * "x" (the leading '/' and any query dropped). 0 if there is no such line. */
static int request_line(const char *req, unsigned len, char *method, unsigned mmax, char *path, unsigned pmax)
{
	unsigned i = 0, n;

	for (n = 0; i < len && req[i] != ' ' && req[i] != '\r' && req[i] != '\n'; i++)
		if (n < mmax - 1)
			method[n++] = req[i];
	method[n] = 0;
	if (!n || i >= len || req[i++] != ' ' || i >= len || req[i++] != '/')
		return 0;
	for (n = 0; i < len && req[i] != ' ' && req[i] != '?' && req[i] != '\r' && req[i] != '\n'; i++) {
		if (n == pmax - 1)
			return 0; /* longer than any stored path */
		path[n++] = req[i];
	}
	path[n] = 0;
	while (i < len && req[i] != '\n') /* the rest of the line must be there */
		i++;
	return i < len;
}

uint32_t http_respond(struct http_response *r, const char *req, unsigned len, const char *version,
		      tar_read_fn rd, void *rd_ctx)
{
	char method[8], path[TAR_PATH_MAX];
	const char *type = "text/plain";
	uint64_t size = 0, block = 0;
	uint32_t n;
	int status;

	r->head_len = 0;
	r->text = 0;
	r->rd = rd;
	r->rd_ctx = rd_ctx;
	if (!request_line(req, len, method, sizeof(method), path, sizeof(path))) {
		status = 400;
		r->text = bad_request;
	} else if (method[0] != 'G' || method[1] != 'E' || method[2] != 'T' || method[3]) {
		status = 405;
		r->text = bad_method;
	} else if (version && version[0] && text_is(path, "version")) {
		status = 200;
		for (n = 0; version[n] && n < HTTP_VERSION_MAX; n++)
			r->line[n] = version[n];
		r->line[n++] = '\n';
		r->line[n] = 0;
		r->text = r->line;
	} else {
		if (!path[0]) {
			const char *index = "index.html";

			for (n = 0; index[n]; n++)
				path[n] = index[n];
			path[n] = 0;
		}
		/* A file too big for a 32-bit length is not served either. */
		if (tar_find(rd, rd_ctx, path, &size, &block) < 0 || size > 0x7fffffff) {
			status = 404;
			r->text = not_found;
		} else {
			status = 200;
			n = text_len(path);
			if (n >= 5 && path[n - 5] == '.' && path[n - 4] == 'h' && path[n - 3] == 't' &&
			    path[n - 2] == 'm' && path[n - 1] == 'l')
				type = "text/html";
		}
	}
	r->block = block;
	r->body_len = r->text ? text_len(r->text) : (uint32_t)size;

	put(r, status == 200 ? "HTTP/1.0 200 OK\r\n" : status == 404 ? "HTTP/1.0 404 Not Found\r\n" :
	       status == 405 ? "HTTP/1.0 405 Method Not Allowed\r\nAllow: GET\r\n" : "HTTP/1.0 400 Bad Request\r\n");
	put(r, "Content-Type: ");
	put(r, type);
	put(r, "\r\nContent-Length: ");
	put_uint(r, r->body_len);
	put(r, "\r\nConnection: close\r\n\r\n");
	return r->head_len + r->body_len;
}

int http_read(const struct http_response *r, uint32_t off, void *buf, unsigned len)
{
	char *out = buf;

	for (; len && off < r->head_len; len--)
		*out++ = r->head[off++];
	if (!len)
		return 0;
	off -= r->head_len;
	if (r->text) {
		for (; len; len--)
			*out++ = r->text[off++];
		return 0;
	}
	return tar_read(r->rd, r->rd_ctx, r->block, off, out, len);
}
