/*
 * hello, native Linux build: the same behaviour as the kernel build, with
 * argv for the boot command line, a file for the block device, a Unix socket
 * for the control channel and SIGTERM for the power button.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ustar.h"
#include "kernel/knobs.h"
#include "net/http.h"

#define MAX_CLIENTS 8
#define MAX_HTTP 16          /* HTTP connections at once; more wait in the backlog */
#define HTTP_IDLE_NSEC (10 * NSEC) /* an HTTP client that makes no progress is dropped */
#define NSEC 1000000000LL

struct client {
	int fd;
	size_t len;
	char buf[64];
};

/* An HTTP connection: reading the request, writing the response, then
 * (our side shut down) reading until the client closes too, so that
 * closing never resets a connection whose response is still in flight. */
enum { HTTP_READ, HTTP_WRITE, HTTP_DRAIN };

struct http_conn {
	int fd, state;
	unsigned req_len;
	uint32_t len, sent;
	long long deadline;
	struct http_response resp;
	char req[HTTP_REQUEST_MAX];
};

static const char *control_path;
static int listen_fd = -1, img_fd = -1, http_fd = -1;
static struct client clients[MAX_CLIENTS];
static struct http_conn conns[MAX_HTTP];
static volatile sig_atomic_t sigterms;

static void on_sigterm(int sig)
{
	(void)sig;
	sigterms++;
}

static void finish(int status)
{
	if (listen_fd >= 0)
		unlink(control_path);
	exit(status);
}

/* Returns 1 if the caller should go on running (stop ignored). */
static int stop_request(const char *why)
{
	if (ignore_stop) {
		printf("hello: ignoring stop request\n");
		return 1;
	}
	printf("hello: stopping (%s)\n", why);
	return 0;
}

static int read_block(void *ctx, uint64_t n, unsigned char *buf)
{
	return pread(*(int *)ctx, buf, TAR_BLOCK, (off_t)(n * TAR_BLOCK)) == TAR_BLOCK ? 0 : -1;
}

static void print_file(void *ctx, const char *path, uint64_t size)
{
	(void)ctx;
	printf("hello: file %s (%llu bytes)\n", path, (unsigned long long)size);
}

static void list_files(void)
{
	const char *img = getenv("MIRARI_BLOCK_0");
	int fd;
	long n;

	if (!img || !*img) {
		printf("hello: files: none attached\n");
		return;
	}
	fd = open(img, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		printf("hello: files: cannot open %s: %s\n", img, strerror(errno));
		return;
	}
	n = tar_list(read_block, print_file, &fd);
	img_fd = fd; /* kept open for the HTTP server */
	printf("hello: files: %ld entries\n", n);
}

static void control_listen(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	control_path = getenv("MIRARI_CONTROL");
	if (!control_path || !*control_path)
		return;
	if (strlen(control_path) >= sizeof(sa.sun_path)) {
		printf("hello: control: path too long\n");
		return;
	}
	strcpy(sa.sun_path, control_path);
	/* A stale socket from a killed predecessor would make bind fail. */
	unlink(control_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
		printf("hello: control: %s: %s\n", control_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	listen_fd = fd;
}

static void reply(int fd, const char *s)
{
	/* MSG_NOSIGNAL: a client that hung up must not kill us with SIGPIPE. */
	send(fd, s, strlen(s), MSG_NOSIGNAL);
}

static void client_close(struct client *c)
{
	close(c->fd);
	c->fd = -1;
}

/* Reads what a client sent and runs each complete line as a command. */
static void client_input(struct client *c)
{
	ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
	char *nl;

	if (r <= 0) {
		client_close(c);
		return;
	}
	c->len += (size_t)r;
	while ((nl = memchr(c->buf, '\n', c->len))) {
		size_t line = (size_t)(nl - c->buf);

		if (line && c->buf[line - 1] == '\r')
			c->buf[line - 1] = 0;
		*nl = 0;
		if (strcmp(c->buf, "stop") == 0) {
			if (!stop_request("control")) {
				reply(c->fd, "ok\n");
				finish(0);
			}
			reply(c->fd, "ignored\n");
		} else {
			reply(c->fd, "error: unknown command\n");
		}
		c->len -= line + 1;
		memmove(c->buf, nl + 1, c->len);
	}
	if (c->len == sizeof(c->buf)) { /* no newline in a full buffer: junk */
		reply(c->fd, "error: line too long\n");
		client_close(c);
	}
}

static void control_accept(void)
{
	int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC), i;

	if (fd < 0)
		return;
	for (i = 0; i < MAX_CLIENTS; i++) {
		if (clients[i].fd < 0) {
			clients[i].fd = fd;
			clients[i].len = 0;
			return;
		}
	}
	close(fd);
}

/* The HTTP server: a non-blocking listening socket on the --ipv4 address,
 * its connections in the same ppoll as everything else. */
static void http_listen(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)http_port),
				  .sin_addr.s_addr = htonl(ipv4_addr) };
	int fd, one = 1;

	for (int i = 0; i < MAX_HTTP; i++)
		conns[i].fd = -1;
	if (ipv4_prefix < 0) {
		printf("hello: http: no --ipv4, not serving\n");
		return;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		printf("hello: http: cannot listen on %u.%u.%u.%u:%u: %s\n", ipv4_addr >> 24, ipv4_addr >> 16 & 255,
		       ipv4_addr >> 8 & 255, ipv4_addr & 255, http_port, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	http_fd = fd;
	printf("hello: http: serving on %u.%u.%u.%u:%u\n", ipv4_addr >> 24, ipv4_addr >> 16 & 255,
	       ipv4_addr >> 8 & 255, ipv4_addr & 255, http_port);
}

static void http_close(struct http_conn *c)
{
	close(c->fd);
	c->fd = -1;
}

/* The stop-serving-after knob: no more listening socket, no connections. */
static void http_stop(void)
{
	if (http_fd < 0)
		return;
	close(http_fd);
	http_fd = -1;
	for (int i = 0; i < MAX_HTTP; i++)
		if (conns[i].fd >= 0)
			http_close(&conns[i]);
	printf("hello: http: stopped serving\n");
}

static int http_slot(void)
{
	for (int i = 0; i < MAX_HTTP; i++)
		if (conns[i].fd < 0)
			return i;
	return -1;
}

static void http_accept(long long now)
{
	int i, fd;

	while ((i = http_slot()) >= 0 &&
	       (fd = accept4(http_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		conns[i] = (struct http_conn){ .fd = fd, .state = HTTP_READ, .deadline = now + HTTP_IDLE_NSEC };
	}
}

/* Whatever the connection can do now without blocking. */
static void http_io(struct http_conn *c, long long now)
{
	static char buf[16384];
	ssize_t r;
	uint32_t n;

	if (c->state == HTTP_READ) {
		r = read(c->fd, c->req + c->req_len, sizeof(c->req) - c->req_len);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (r < 0) {
			http_close(c);
			return;
		}
		c->deadline = now + HTTP_IDLE_NSEC;
		c->req_len += (unsigned)r;
		/* The request is complete: a blank line, a full buffer or EOF. */
		if (r && c->req_len < sizeof(c->req) && !http_request_done(c->req, c->req_len))
			return;
		c->len = http_respond(&c->resp, c->req, c->req_len, app_version, read_block, &img_fd);
		c->sent = 0;
		c->state = HTTP_WRITE;
	}
	if (c->state == HTTP_WRITE) {
		n = c->len - c->sent < sizeof(buf) ? c->len - c->sent : sizeof(buf);
		if (http_read(&c->resp, c->sent, buf, n) < 0) {
			http_close(c);
			return;
		}
		r = send(c->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (r < 0) {
			http_close(c);
			return;
		}
		c->sent += (uint32_t)r;
		if (c->sent == c->len) {
			shutdown(c->fd, SHUT_WR);
			c->state = HTTP_DRAIN;
		}
	} else { /* HTTP_DRAIN: drop what the client still sends, until its EOF */
		r = read(c->fd, buf, sizeof(buf));
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (r <= 0) {
			http_close(c);
			return;
		}
	}
	c->deadline = now + HTTP_IDLE_NSEC;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * NSEC + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_sigterm };
	sigset_t term, waitmask;
	struct pollfd pfd[1 + MAX_CLIENTS + 1 + MAX_HTTP];
	unsigned long beat = 0, flood_seq = 0;
	sig_atomic_t sigterms_seen = 0;
	long long next;
	int i;

	/* A supervisor reads us through a pipe; it must see each line at once. */
	setvbuf(stdout, NULL, _IOLBF, 0);

	printf("hello: boot args: ");
	for (i = 1; i < argc; i++) {
		printf(i == 1 ? "%s" : " %s", argv[i]);
		parse_word(argv[i], argv[i] + strlen(argv[i])); /* the kernels' parser */
	}
	printf("\n");

	list_files();
	http_listen();

	for (i = 0; i < MAX_CLIENTS; i++)
		clients[i].fd = -1;
	control_listen();

	/* SIGTERM stays blocked except inside ppoll, so a signal can never slip
	 * in between checking the counter and going to sleep. SA_RESTART keeps
	 * stdout writes from failing with EINTR while flooding. */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &waitmask);
	sigdelset(&waitmask, SIGTERM);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGTERM, &sa, NULL);

	next = now_ns() + NSEC;
	for (;;) {
		long long now = now_ns(), wait = flood ? 0 : next - now;
		struct timespec ts;
		int n = 0, c0, h0;

		if (now >= next) {
			printf("hello: heartbeat %lu\n", ++beat);
			if (exit_after && beat == exit_after) {
				printf("hello: exiting with failure\n");
				finish(3);
			}
			if (stop_serving_after && beat == stop_serving_after)
				http_stop();
			/* Stay on the one-second grid, but skip beats that a
			 * stall (e.g. SIGSTOP) made us miss instead of bursting. */
			next += NSEC;
			if (next <= now)
				next = now + NSEC;
			continue;
		}
		if (wait < 0)
			wait = 0;

		if (listen_fd >= 0)
			pfd[n++] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
		c0 = n;
		for (i = 0; i < MAX_CLIENTS; i++)
			pfd[n++] = (struct pollfd){ .fd = clients[i].fd, .events = POLLIN };
		/* The HTTP listening socket only while a connection slot is free
		 * (negative fds are skipped), then the connections. */
		h0 = n;
		pfd[n++] = (struct pollfd){ .fd = http_slot() >= 0 ? http_fd : -1, .events = POLLIN };
		for (i = 0; i < MAX_HTTP; i++)
			pfd[n++] = (struct pollfd){ .fd = conns[i].fd,
						    .events = conns[i].state == HTTP_WRITE ? POLLOUT : POLLIN };
		ts.tv_sec = wait / NSEC;
		ts.tv_nsec = wait % NSEC;
		n = ppoll(pfd, (nfds_t)n, &ts, &waitmask);
		now = now_ns();
		if (n > 0) {
			if (listen_fd >= 0 && (pfd[0].revents & POLLIN))
				control_accept();
			for (i = 0; i < MAX_CLIENTS; i++) {
				struct pollfd *p = &pfd[c0 + i];

				if (p->fd >= 0 && p->fd == clients[i].fd && p->revents)
					client_input(&clients[i]);
			}
			for (i = 0; i < MAX_HTTP; i++) {
				struct pollfd *p = &pfd[h0 + 1 + i];

				if (p->fd >= 0 && p->fd == conns[i].fd && p->revents)
					http_io(&conns[i], now);
			}
			if (http_fd >= 0 && pfd[h0].fd == http_fd && (pfd[h0].revents & POLLIN))
				http_accept(now);
		}
		for (i = 0; i < MAX_HTTP; i++) /* checked about once a second: good enough */
			if (conns[i].fd >= 0 && now >= conns[i].deadline)
				http_close(&conns[i]);
		while (sigterms_seen != sigterms) {
			sigterms_seen++;
			if (!stop_request("SIGTERM"))
				finish(0);
		}
		if (flood)
			printf("hello: flood %lu %s\n", ++flood_seq, FLOOD_TEXT);
	}
}
