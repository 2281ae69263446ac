/*
 * fd.c - the two sources that are nothing more than an fd pump (pump.c):
 * pipe:PATH and stdin ("-"), and the check that keeps pipe: paths out of
 * the mount (source_path_inside()).
 *
 * pipe:PATH is opened off the loop thread, by a short-lived thread: an
 * open() can block indefinitely (a file on another FUSE mount that waits
 * for its data, a hung NFS server, a device), and the one loop thread
 * serves every stream. See start_opener().
 */
#include "streamfs/source.h"

#include "log.h"
#include "sources.h"
#include "streamfs/store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- paths inside the mount ------------------------------------------ */

/* @path (absolute) with "." and ".." resolved by name and slashes
 * squeezed; malloc'ed, NULL without memory. */
static char *normalise(const char *path)
{
	size_t len = 0;
	char *out = malloc(strlen(path) + 2);
	if (!out)
		return NULL;
	for (const char *p = path; *p;) {
		while (*p == '/')
			p++;
		const char *e = strchrnul(p, '/');
		size_t n = (size_t)(e - p);
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
		} else if (n > 0 && !(n == 1 && p[0] == '.')) {
			out[len++] = '/';
			memcpy(out + len, p, n);
			len += n;
		}
		p = e;
	}
	if (len == 0)
		out[len++] = '/';
	out[len] = '\0';
	return out;
}

/* @path (absolute) with the symlinks of its longest existing prefix
 * resolved; malloc'ed, NULL if that cannot be done. May block. */
static char *resolve_existing(const char *path)
{
	char *head = strdup(path);
	size_t cut = strlen(path);
	while (head) {
		head[cut] = '\0';
		char *real = realpath(cut ? head : "/", NULL);
		if (real) {
			char *out;
			if (asprintf(&out, "%s/%s", real, path + cut) < 0)
				out = NULL;
			free(real);
			free(head);
			return out;
		}
		if ((errno != ENOENT && errno != ENOTDIR) || cut == 0)
			break;
		while (cut > 0 && path[cut - 1] != '/')
			cut--;
		while (cut > 0 && path[cut - 1] == '/')
			cut--;
	}
	free(head);
	return NULL;
}

bool source_path_inside(const char *path, const char *mountpoint, bool resolve)
{
	char *real = resolve ? resolve_existing(path) : NULL;
	char *p = normalise(real ? real : path), *m = normalise(mountpoint);
	bool inside = false;
	if (p && m) {
		size_t ml = strlen(m);
		inside = ml == 1 || (strncmp(p, m, ml) == 0 && (p[ml] == '\0' || p[ml] == '/'));
	}
	free(real);
	free(p);
	free(m);
	return inside;
}

/* ---- pipe:PATH and stdin ---------------------------------------------- */

struct fd_src {
	struct ioloop *loop;
	struct stream *s;
	char *path;       /* pipe: the path; stdin: NULL */
	char *mountpoint; /* pipe: refused to open below it; may be NULL */
	int fd;           /* stdin: the saved descriptor until started */
	int open_sock;    /* pipe: our end of the opener's socket while it opens */
	struct ioloop_watch open_watch;
	struct fd_pump pump;
};

static void fd_src_done(struct fd_pump *p, int err)
{
	struct fd_src *f = p->data;
	assert(ioloop_in_loop(f->loop));
	if (err == 0)
		stream_end(f->s);
	else if (err != ECANCELED)
		stream_fail(f->s, err, "read %s: %s", f->path ? f->path : "stdin", strerror(err));
	source_drop(f->s);
}

/* Pump @fd (owned) into the stream; loop thread. */
static void fd_src_pump(struct fd_src *f, int fd)
{
	int r = fd_pump_start(&f->pump, f->loop, f->s, fd, fd_src_done, f);
	if (r < 0) {
		stream_fail(f->s, -r, "cannot read %s: %s", f->path ? f->path : "stdin",
		            strerror(-r));
		source_drop(f->s);
	}
}

/* What the opener thread reports; the descriptor travels as SCM_RIGHTS. */
struct open_result {
	int err;     /* 0: the descriptor is attached */
	bool inside; /* refused: the path leads into the mount */
};

struct opener {
	char *path, *mountpoint;
	int sock;
};

static void opener_free(struct opener *o)
{
	if (o->sock >= 0)
		close(o->sock);
	free(o->path);
	free(o->mountpoint);
	free(o);
}

static void *opener_main(void *arg)
{
	struct opener *o = arg;
	pthread_setname_np(pthread_self(), "streamfs-open");
	struct open_result res = {0};
	int fd = -1;
	/* By name at start-up and at add; here again through symlinks made
	 * since: the daemon opening its own files would wait on itself. */
	if (o->mountpoint && source_path_inside(o->path, o->mountpoint, true))
		res.inside = true;
	/* O_NONBLOCK: a FIFO without a writer opens at once (see
	 * fd_src_opened() for what that means). */
	else if ((fd = open(o->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
		res.err = errno;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = &res, .iov_len = sizeof(res)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	/* Fails (EPIPE) if the stream was cancelled meanwhile: nobody to tell. */
	ssize_t n = sendmsg(o->sock, &mh, MSG_NOSIGNAL);
	(void)n;
	if (fd >= 0)
		close(fd);
	opener_free(o);
	return NULL;
}

static void close_opener(struct fd_src *f)
{
	ioloop_del(f->loop, &f->open_watch);
	/* A descriptor still in flight is closed with the socket. */
	close(f->open_sock);
	f->open_sock = -1;
}

/* The opener's answer; loop thread. */
static void fd_src_opened(struct ioloop_watch *w, uint32_t events)
{
	struct fd_src *f = w->data;
	assert(ioloop_in_loop(f->loop));
	struct open_result res = {.err = EIO};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = &res, .iov_len = sizeof(res)};
	struct msghdr mh = {.msg_iov = &iov,
	                    .msg_iovlen = 1,
	                    .msg_control = u.buf,
	                    .msg_controllen = sizeof(u.buf)};
	ssize_t n = recvmsg(f->open_sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	int fd = -1;
	struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL;
	if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	close_opener(f);
	if (n != (ssize_t)sizeof(res) && fd >= 0) {
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		if (res.inside)
			stream_fail(f->s, ELOOP, "pipe path '%s' is inside the mount point '%s'",
			            f->path, f->mountpoint);
		else
			stream_fail(f->s, res.err ? res.err : EIO, "%s: %s", f->path,
			            strerror(res.err ? res.err : EIO));
		source_drop(f->s);
		return;
	}
	/* A FIFO opened without a writer reads EOF until one comes, but epoll
	 * reports nothing on it until a writer has written or come and gone:
	 * the stream simply waits for its writer. */
	fd_src_pump(f, fd);
}

/* Open f->path in a thread of its own; loop thread. Returns 0 or -errno. */
static int start_opener(struct fd_src *f)
{
	assert(ioloop_in_loop(f->loop));
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	struct opener *o = calloc(1, sizeof(*o));
	if (!o || !(o->path = strdup(f->path)) ||
	    (f->mountpoint && !(o->mountpoint = strdup(f->mountpoint)))) {
		if (o)
			free(o->path);
		free(o);
		close(sv[0]);
		close(sv[1]);
		return -ENOMEM;
	}
	o->sock = sv[1];
	f->open_sock = sv[0];
	f->open_watch = (struct ioloop_watch){.fd = sv[0], .cb = fd_src_opened, .data = f};
	int r = ioloop_add(f->loop, &f->open_watch, EPOLLIN);
	if (r < 0) {
		close(sv[0]);
		f->open_sock = -1;
		opener_free(o);
		return r;
	}
	/* Detached, small, and with every signal blocked: signals are for the
	 * daemon's other threads. */
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t t;
	r = -pthread_create(&t, &attr, opener_main, o);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r < 0) {
		close_opener(f);
		opener_free(o);
	}
	return r;
}

static void fd_src_begin(void *arg)
{
	struct fd_src *f = arg;
	assert(ioloop_in_loop(f->loop));
	if (f->path) {
		int r = start_opener(f);
		if (r < 0) {
			stream_fail(f->s, -r, "cannot open %s: %s", f->path, strerror(-r));
			source_drop(f->s);
		}
		return;
	}
	int fd = f->fd;
	f->fd = -1;
	fd_src_pump(f, fd);
}

static void fd_src_cancel_in_loop(void *arg)
{
	struct fd_src *f = arg;
	assert(ioloop_in_loop(f->loop));
	struct stream *s = f->s;
	if (f->open_sock >= 0) {
		close_opener(f); /* the opener finds nobody to tell */
		source_drop(s);
	} else if (f->pump.running) {
		fd_pump_stop(&f->pump);
		source_drop(s);
	}
	stream_unref(s); /* the ref of this call */
}

static int fd_src_start(struct stream *s, void *src)
{
	struct fd_src *f = src;
	return source_start_in_loop(s, f->loop, fd_src_begin, f);
}

static void fd_src_cancel(struct stream *s, void *src)
{
	struct fd_src *f = src;
	/* If the loop is gone, nothing runs any more: nothing to stop. */
	source_call_in_loop(s, f->loop, fd_src_cancel_in_loop, f);
}

static void fd_src_resume_in_loop(void *arg)
{
	struct fd_src *f = arg;
	struct stream *s = f->s;
	fd_pump_resume(&f->pump);
	stream_unref(s); /* the ref of this call */
}

/* Room in the store again after a pause: read on. */
static void fd_src_resume(struct stream *s, void *src)
{
	struct fd_src *f = src;
	stream_ref(s);
	if (ioloop_call(f->loop, fd_src_resume_in_loop, f) < 0)
		stream_unref(s);
}

static void fd_src_destroy(void *src)
{
	struct fd_src *f = src;
	if (f->fd >= 0)
		close(f->fd);
	if (f->open_sock >= 0)
		close(f->open_sock); /* the loop stopped while the opener ran */
	free(f->path);
	free(f->mountpoint);
	free(f);
}

static const struct stream_source_ops pipe_ops = {
    .kind = "pipe",
    .start = fd_src_start,
    .cancel = fd_src_cancel,
    .destroy = fd_src_destroy,
    .resume = fd_src_resume,
};

static const struct stream_source_ops stdin_ops = {
    .kind = "stdin",
    .start = fd_src_start,
    .cancel = fd_src_cancel,
    .destroy = fd_src_destroy,
    .resume = fd_src_resume,
};

static struct stream *fd_src_new(struct ioloop *loop, const char *name, const char *path,
                                 const char *mountpoint, int fd, struct store *store)
{
	struct fd_src *f = calloc(1, sizeof(*f));
	if (!f || (path && !(f->path = strdup(path))) ||
	    (mountpoint && !(f->mountpoint = strdup(mountpoint)))) {
		if (f)
			free(f->path);
		free(f);
		store_close(store);
		if (fd >= 0)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	f->loop = loop;
	f->fd = fd;
	f->open_sock = -1;
	f->pump.fd = -1;
	/* On failure stream_new() has destroyed f already. */
	struct stream *s = stream_new(name, store, path ? &pipe_ops : &stdin_ops, f);
	if (s)
		f->s = s;
	return s;
}

struct stream *source_pipe_new(struct ioloop *loop, const char *name, const char *path,
                               const char *mountpoint, struct store *store)
{
	return fd_src_new(loop, name, path, mountpoint, -1, store);
}

struct stream *source_stdin_new(struct ioloop *loop, const char *name, int fd, struct store *store)
{
	return fd_src_new(loop, name, NULL, NULL, fd, store);
}
