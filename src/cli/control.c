/*
 * control.c - see control.h.
 */
#include "control.h"

#include "escape.h"
#include "log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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

struct conn {
	struct ioloop_watch w;
	struct ioloop_timer timer;
	struct control *c;
	char *buf; /* grows with the request, up to REQ_MAX */
	size_t len, cap;
	struct conn *next;
};

struct control {
	struct ioloop *loop;
	struct control_ops ops;
	struct ioloop_watch listen;
	struct conn *conns; /* loop thread only */
	unsigned nconns;
	bool started;
};

static void conn_close(struct conn *k)
{
	struct control *c = k->c;
	for (struct conn **p = &c->conns; *p; p = &(*p)->next) {
		if (*p == k) {
			*p = k->next;
			break;
		}
	}
	c->nconns--;
	ioloop_del(c->loop, &k->w);
	ioloop_timer_disarm(c->loop, &k->timer);
	close(k->w.fd);
	free(k->buf);
	free(k);
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
	for (size_t i = 0; i < k->len && nf < 256;) {
		f[nf++] = k->buf + i;
		i += strlen(k->buf + i) + 1;
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

static void conn_event(struct ioloop_watch *w, uint32_t events)
{
	struct conn *k = w->data;
	for (;;) {
		if (k->len == REQ_MAX) {
			answer(k, "error: request too long\n");
			conn_close(k);
			return;
		}
		if (k->len == k->cap) {
			size_t cap = k->cap * 4 > REQ_MAX ? REQ_MAX : k->cap * 4;
			char *b = realloc(k->buf, cap + 1);
			if (!b) {
				answer(k, "error: out of memory\n");
				conn_close(k);
				return;
			}
			k->buf = b;
			k->cap = cap;
		}
		ssize_t n = recv(w->fd, k->buf + k->len, k->cap - k->len, MSG_DONTWAIT);
		if (n > 0) {
			k->len += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		break; /* EOF: the whole request is here (or an error) */
	}
	if (k->len > 0 && k->buf[k->len - 1] == '\0')
		handle(k);
	else
		answer(k, "error: bad request\n");
	conn_close(k);
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
		    (cred.uid != 0 && cred.uid != getuid())) {
			static const char msg[] = "error: permission denied\n";
			ssize_t n = send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
			(void)n;
			close(fd);
			continue;
		}
		if (c->nconns >= CONN_MAX) {
			static const char msg[] = "error: busy, try again\n";
			ssize_t n = send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
			(void)n;
			close(fd);
			continue;
		}
		struct conn *k = calloc(1, sizeof(*k));
		if (k) {
			k->cap = 4096;
			k->buf = malloc(k->cap + 1);
		}
		if (!k || !k->buf) {
			if (k)
				free(k);
			close(fd);
			continue;
		}
		k->c = c;
		k->w = (struct ioloop_watch){.fd = fd, .cb = conn_event, .data = k};
		if (ioloop_add(c->loop, &k->w, EPOLLIN) < 0) {
			close(fd);
			free(k->buf);
			free(k);
			continue;
		}
		k->next = c->conns;
		c->conns = k;
		c->nconns++;
		k->timer = (struct ioloop_timer){.cb = conn_timeout, .data = k};
		ioloop_timer_arm(c->loop, &k->timer, CONN_TIMEOUT_MS);
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
	while (c->conns) {
		struct conn *k = c->conns;
		c->conns = k->next;
		ioloop_timer_disarm(c->loop, &k->timer);
		close(k->w.fd);
		free(k->buf);
		free(k);
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

int control_client(const char *mountpoint, const char *const *fields, size_t nfields)
{
	char name[128];
	ssize_t nl = getxattr(mountpoint, "user.streamfs.control", name, sizeof(name) - 1);
	if (nl <= 1 || name[0] != '@') {
		fprintf(stderr, "streamfs: '%s' is not a streamfs mount with a control socket\n",
			mountpoint);
		return 1;
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
		return 1;
	}
	if (!peer_trusted(fd, mountpoint)) {
		close(fd);
		return 1;
	}
	for (size_t i = 0; i < nfields; i++) {
		size_t fl = strlen(fields[i]) + 1;
		if (send(fd, fields[i], fl, MSG_NOSIGNAL) != (ssize_t)fl) {
			fprintf(stderr, "streamfs: sending the request: %s\n", strerror(errno));
			close(fd);
			return 1;
		}
	}
	shutdown(fd, SHUT_WR);
	char reply[2048], shown[8192];
	size_t got = 0;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	while (got < sizeof(reply) - 1 && poll(&pfd, 1, CLIENT_TIMEOUT_MS) > 0) {
		ssize_t r = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	reply[got] = '\0';
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
