/*
 * control.c - the control socket: the daemon's listener and connections,
 * and the client side of "streamfs add" and "streamfs rm".
 *
 * Protocol and contract in control.h. What this file keeps true:
 * - The daemon's side runs in the loop thread only, and never blocks: the
 *   socket is non-blocking, a request is read as it comes (a vector that
 *   grows up to REQ_MAX), and the one-line answer fits in the send buffer.
 * - A connection ends in one of three ways, each through conn_close(): the
 *   answer, CONN_TIMEOUT_MS without a whole request, or the daemon's end
 *   (control_close()). At most CONN_MAX are open at once.
 * - What the client prints of an answer goes through esc_text(): a name
 *   or a source in it cannot send escapes to the terminal.
 */
#include "control.h"

#include "escape.h"
#include "log.h"
#include "vector.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* A request holds a source as long as a command line can (one argument
 * is at most 128 KiB), plus its options. */
#define REQ_MAX (256 * 1024)
#define CLIENT_TIMEOUT_MS 30000
/* A client has this long from connecting to its whole request; then it is
 * dropped, so idle or slow connections cannot pile up. */
#define CONN_TIMEOUT_MS 5000
#define CONN_MAX 32 /* connections at once; more are refused */

DEFINE_VECTOR(bytes, char);

/* A client, from accept() to the answer. */
struct conn {
	struct ioloop_watch w;
	struct ioloop_timer timer;
	struct control *c;
	struct bytes req; /* the request so far, up to REQ_MAX */
	LIST_ENTRY(conn) link;
};

struct control {
	struct ioloop *loop;
	struct control_ops ops;
	struct ioloop_watch listen;
	LIST_HEAD(, conn) conns; /* loop thread only */
	unsigned nconns;
	bool started;
};

/* Forget @k: timer, descriptor, memory. */
static void conn_free(struct control *c, struct conn *k)
{
	ioloop_timer_disarm(c->loop, &k->timer);
	close(k->w.fd);
	bytes_free(&k->req);
	free(k);
}

static void conn_close(struct conn *k)
{
	struct control *c = k->c;
	LIST_REMOVE(k, link);
	c->nconns--;
	ioloop_del(c->loop, &k->w);
	conn_free(c, k);
}

static void conn_timeout(struct ioloop_timer *t)
{
	struct conn *k = t->data;
	log_debug("control: dropping a client that sent no whole request in %d ms",
	          CONN_TIMEOUT_MS);
	conn_close(k);
}

static void answer(struct conn *k, const char *line)
{
	/* A short line on a fresh socket: it fits in the send buffer. */
	ssize_t n = send(k->w.fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n;
}

static void handle(struct conn *k)
{
	struct control *c = k->c;
	char err[1024] = "";
	const char *f[256];
	size_t nf = 0;
	for (size_t i = 0; i < k->req.len && nf < 256;) {
		f[nf++] = k->req.ptr + i;
		i += strlen(k->req.ptr + i) + 1;
	}
	int r = -1;
	if (nf >= 2 && strcmp(f[0], "add") == 0) {
		r = c->ops.add(c->ops.ctx, f[1], (char *const *)(f + 2), nf - 2, err, sizeof(err));
	} else if (nf == 2 && strcmp(f[0], "rm") == 0) {
		r = c->ops.rm(c->ops.ctx, f[1], err, sizeof(err));
	} else {
		snprintf(err, sizeof(err), "bad request");
	}
	char line[1100];
	snprintf(line, sizeof(line), r == 0 ? "ok\n" : "error: %s\n", err);
	/* "add" logs itself: its source may hold a password to redact. */
	if (r == 0 && strcmp(f[0], "rm") == 0)
		log_info("control: rm %s", f[1]);
	answer(k, line);
}

/* Read what is there of the request. Returns 1 once the client has sent
 * all of it (EOF), 0 to wait for more, -1 after answering an error. */
static int conn_read(struct conn *k)
{
	struct bytes *b = &k->req;
	for (;;) {
		if (b->len == REQ_MAX) {
			answer(k, "error: request too long\n");
			return -1;
		}
		if (b->len == b->cap && bytes_reserve(b, b->len < 4096 ? 4096 : b->len) < 0) {
			answer(k, "error: out of memory\n");
			return -1;
		}
		size_t room = (b->cap < REQ_MAX ? b->cap : REQ_MAX) - b->len;
		ssize_t n = recv(k->w.fd, b->ptr + b->len, room, MSG_DONTWAIT);
		if (n > 0) {
			b->len += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		return 1; /* EOF: the whole request is here (or an error) */
	}
}

static void conn_event(struct ioloop_watch *w, uint32_t events)
{
	struct conn *k = w->data;
	int r = conn_read(k);
	if (r == 0)
		return;
	if (r > 0 && k->req.len > 0 && k->req.ptr[k->req.len - 1] == '\0')
		handle(k);
	else if (r > 0)
		answer(k, "error: bad request\n");
	conn_close(k);
}

/* Answer a client we do not serve, and hang up. */
static void refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n;
	close(fd);
}

/* Serve the client on @fd: watch it, and give it CONN_TIMEOUT_MS. */
static void conn_new(struct control *c, int fd)
{
	struct conn *k = calloc(1, sizeof(*k));
	if (!k) {
		close(fd);
		return;
	}
	k->c = c;
	k->w = (struct ioloop_watch){.fd = fd, .cb = conn_event, .data = k};
	if (ioloop_add(c->loop, &k->w, EPOLLIN) < 0) {
		close(fd);
		free(k);
		return;
	}
	LIST_INSERT_HEAD(&c->conns, k, link);
	c->nconns++;
	k->timer = (struct ioloop_timer){.cb = conn_timeout, .data = k};
	ioloop_timer_arm(c->loop, &k->timer, CONN_TIMEOUT_MS);
}

static void listen_event(struct ioloop_watch *w, uint32_t events)
{
	struct control *c = w->data;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
		    (cred.uid != 0 && cred.uid != getuid()))
			refuse(fd, "error: permission denied\n");
		else if (c->nconns >= CONN_MAX)
			refuse(fd, "error: busy, try again\n");
		else
			conn_new(c, fd);
	}
}

struct control *control_open(struct ioloop *loop, const struct control_ops *ops, char *name,
                             size_t namelen)
{
	static unsigned seq;
	struct control *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->loop = loop;
	c->ops = *ops;
	LIST_INIT(&c->conns);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		free(c);
		return NULL;
	}
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* Abstract: sun_path[0] == 0. The name is unique per daemon. */
	int n = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "streamfs-%d-%u-%ld",
	                 (int)getpid(), seq++, (long)ts.tv_nsec);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 16) < 0) {
		int e = errno;
		close(fd);
		free(c);
		errno = e;
		return NULL;
	}
	snprintf(name, namelen, "@%s", sa.sun_path + 1);
	c->listen = (struct ioloop_watch){.fd = fd, .cb = listen_event, .data = c};
	return c;
}

void control_start(void *arg)
{
	struct control *c = arg;
	if (ioloop_add(c->loop, &c->listen, EPOLLIN) == 0)
		c->started = true;
	else
		log_error("control: cannot watch the control socket");
}

void control_close(struct control *c)
{
	if (!c)
		return;
	while (!LIST_EMPTY(&c->conns)) {
		struct conn *k = LIST_FIRST(&c->conns);
		LIST_REMOVE(k, link);
		conn_free(c, k);
	}
	close(c->listen.fd);
	free(c);
}

/* ---- client ----------------------------------------------------------- */

/*
 * Abstract socket names belong to nobody: any local user can bind the name
 * a mount advertises once its daemon is gone (or name a socket of theirs
 * in the xattr of a directory they own). A request can carry credentials,
 * so it goes only to a listener run by root or by us, as the daemon
 * serves only root and its own user.
 */
static bool peer_trusted(int fd, const char *mountpoint)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		fprintf(stderr, "streamfs: cannot check the daemon of '%s': %s\n", mountpoint,
		        strerror(errno));
		return false;
	}
	if (cred.uid == 0 || cred.uid == geteuid() || cred.uid == getuid())
		return true;
	fprintf(stderr,
	        "streamfs: the control socket of '%s' belongs to uid %u, not to root or you: "
	        "nothing sent\n",
	        mountpoint, (unsigned)cred.uid);
	return false;
}

/* A connection to the daemon behind @mountpoint, checked: or -1, said. */
static int connect_daemon(const char *mountpoint)
{
	char name[128];
	ssize_t nl = getxattr(mountpoint, "user.streamfs.control", name, sizeof(name) - 1);
	if (nl <= 1 || name[0] != '@') {
		fprintf(stderr, "streamfs: '%s' is not a streamfs mount with a control socket\n",
		        mountpoint);
		return -1;
	}
	name[nl] = '\0';
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(name + 1);
	if (n > sizeof(sa.sun_path) - 2)
		n = sizeof(sa.sun_path) - 2;
	memcpy(sa.sun_path + 1, name + 1, n);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, len) < 0) {
		fprintf(stderr, "streamfs: cannot reach the daemon of '%s': %s\n", mountpoint,
		        strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!peer_trusted(fd, mountpoint)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Send the request and read the answer into @reply (NUL-terminated). */
static int exchange(int fd, const char *const *fields, size_t nfields, char *reply, size_t size)
{
	for (size_t i = 0; i < nfields; i++) {
		size_t fl = strlen(fields[i]) + 1;
		if (send(fd, fields[i], fl, MSG_NOSIGNAL) != (ssize_t)fl) {
			fprintf(stderr, "streamfs: sending the request: %s\n", strerror(errno));
			return -1;
		}
	}
	shutdown(fd, SHUT_WR);
	size_t got = 0;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	while (got < size - 1 && poll(&pfd, 1, CLIENT_TIMEOUT_MS) > 0) {
		ssize_t r = recv(fd, reply + got, size - 1 - got, 0);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	reply[got] = '\0';
	return 0;
}

int control_client(const char *mountpoint, const char *const *fields, size_t nfields)
{
	char reply[2048], shown[8192];
	int fd = connect_daemon(mountpoint);
	if (fd < 0)
		return 1;
	int r = exchange(fd, fields, nfields, reply, sizeof(reply));
	close(fd);
	if (r < 0)
		return 1;
	if (strcmp(reply, "ok\n") == 0)
		return 0;
	if (strncmp(reply, "error: ", 7) == 0) {
		/* One line, and no terminal escapes from a name or a source. */
		size_t l = strcspn(reply + 7, "\n");
		esc_text(shown, sizeof(shown), reply + 7, l);
		fprintf(stderr, "streamfs: %s\n", shown);
		return 1;
	}
	fprintf(stderr, "streamfs: no answer from the daemon of '%s'\n", mountpoint);
	return 1;
}
