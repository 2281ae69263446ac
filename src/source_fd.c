/*
 * source_fd.c - the fd pump (see source.h) and the two sources that are
 * nothing more than a pump: pipe:PATH and stdin ("-").
 *
 * Bytes move with read() into a buffer and pwrite() into the store (see
 * store_fill_fd() for why not splice).
 */
#include "source.h"

#include "log.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PUMP_CHUNK (1u << 20)   /* one read */
#define PUMP_BUDGET (8u << 20)  /* per wake-up, so other streams get their turn */

static void pump_finish(struct fd_pump *p, int err)
{
	fd_pump_stop(p);
	if (p->on_done)
		p->on_done(p, err);
}

/* Move what is there, up to the budget. Returns true if the pump should
 * be called again (stepped mode). */
static bool pump_some(struct fd_pump *p)
{
	size_t moved = 0;
	while (moved < PUMP_BUDGET) {
		ssize_t n = stream_fill_fd(p->s, p->fd, PUMP_CHUNK);
		if (n > 0) {
			moved += (size_t)n;
			if (!p->nonblock && p->polled)
				return false; /* a blocking fd: once per readiness */
			continue;
		}
		if (n == -EAGAIN)
			return false;
		if (n == -ENOBUFS) {
			/* The store has no room: stop reading, so the producer
			 * blocks on a full pipe, until the stream is resumed. */
			p->paused = true;
			if (p->polled)
				ioloop_del(p->loop, &p->watch);
			return false;
		}
		if (n == 0)
			pump_finish(p, 0);
		else if (n == -ECANCELED || n == -ENOSPC || n == -EFBIG)
			pump_finish(p, ECANCELED);
		else
			pump_finish(p, (int)-n);
		return false;
	}
	return true;
}

static void pump_event(struct ioloop_watch *w, uint32_t events)
{
	pump_some(w->data);
}

static void pump_step(void *arg)
{
	struct fd_pump *p = arg;
	struct stream *s = p->s; /* the ref taken when this step was queued */
	if (p->running && pump_some(p) && p->running) {
		if (ioloop_call(p->loop, pump_step, p) == 0)
			return; /* the ref moves to the next step */
		pump_finish(p, ESHUTDOWN);
	}
	stream_unref(s);
}

int fd_pump_start(struct fd_pump *p, struct ioloop *loop, struct stream *s, int fd,
		  void (*on_done)(struct fd_pump *p, int err), void *data)
{
	p->loop = loop;
	p->s = s;
	p->fd = fd;
	p->on_done = on_done;
	p->data = data;
	p->running = true;
	p->paused = false;
	int fl = fcntl(fd, F_GETFL);
	p->nonblock = fl >= 0 && (fl & O_NONBLOCK);
	p->watch.fd = fd;
	p->watch.cb = pump_event;
	p->watch.data = p;
	int r = ioloop_add(loop, &p->watch, EPOLLIN);
	if (r == 0) {
		p->polled = true;
		return 0;
	}
	if (r != -EPERM)
		goto err;
	/* Not pollable (regular file, /dev/null): always "ready"; read it in
	 * steps. A stepped pump reads with the fd's own blocking mode, which
	 * for regular files never waits long. */
	p->polled = false;
	p->nonblock = true;
	stream_ref(s);
	r = ioloop_call(loop, pump_step, p);
	if (r == 0)
		return 0;
	stream_unref(s);
err:
	p->running = false;
	close(fd);
	p->fd = -1;
	return r;
}

void fd_pump_resume(struct fd_pump *p)
{
	if (!p->running || !p->paused)
		return;
	p->paused = false;
	if (p->polled) {
		if (ioloop_add(p->loop, &p->watch, EPOLLIN) < 0)
			pump_finish(p, ENOMEM);
		return;
	}
	stream_ref(p->s);
	if (ioloop_call(p->loop, pump_step, p) < 0) {
		stream_unref(p->s);
		pump_finish(p, ESHUTDOWN);
	}
}

void fd_pump_stop(struct fd_pump *p)
{
	if (!p->running)
		return;
	p->running = false;
	if (p->polled && !p->paused)
		ioloop_del(p->loop, &p->watch);
	close(p->fd);
	p->fd = -1;
}

/* ---- running sources ------------------------------------------------- */

static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t busy_cond = PTHREAD_COND_INITIALIZER;
static unsigned busy; /* protected by busy_lock */

void source_take(struct stream *s)
{
	stream_ref(s);
	pthread_mutex_lock(&busy_lock);
	busy++;
	pthread_mutex_unlock(&busy_lock);
}

void source_drop(struct stream *s)
{
	pthread_mutex_lock(&busy_lock);
	if (--busy == 0)
		pthread_cond_broadcast(&busy_cond);
	pthread_mutex_unlock(&busy_lock);
	stream_unref(s);
}

bool source_wait_all_done(unsigned timeout_ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&busy_lock);
	while (busy > 0 && pthread_cond_timedwait(&busy_cond, &busy_lock, &dl) == 0)
		;
	bool done = busy == 0;
	pthread_mutex_unlock(&busy_lock);
	return done;
}

/* ---- pipe:PATH and stdin ---------------------------------------------- */

struct fd_src {
	struct ioloop *loop;
	struct stream *s;
	char *path; /* pipe: the path; stdin: NULL */
	int fd;     /* stdin: the saved descriptor until started */
	struct fd_pump pump;
};

static void fd_src_done(struct fd_pump *p, int err)
{
	struct fd_src *f = p->data;
	if (err == 0)
		stream_end(f->s);
	else if (err != ECANCELED)
		stream_fail(f->s, err, "read %s: %s", f->path ? f->path : "stdin", strerror(err));
	source_drop(f->s);
}

static void fd_src_begin(void *arg)
{
	struct fd_src *f = arg;
	int fd = f->fd;
	f->fd = -1;
	if (f->path) {
		/* O_NONBLOCK: opening a FIFO without a writer must not block the
		 * loop. epoll reports nothing until a writer has written or come
		 * and gone, so the stream simply waits for its writer. */
		fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0) {
			stream_fail(f->s, errno, "%s: %s", f->path, strerror(errno));
			source_drop(f->s);
			return;
		}
	}
	int r = fd_pump_start(&f->pump, f->loop, f->s, fd, fd_src_done, f);
	if (r < 0) {
		stream_fail(f->s, -r, "cannot read %s: %s", f->path ? f->path : "stdin",
			    strerror(-r));
		source_drop(f->s);
	}
}

static void fd_src_cancel_in_loop(void *arg)
{
	struct fd_src *f = arg;
	struct stream *s = f->s;
	if (f->pump.running) {
		fd_pump_stop(&f->pump);
		source_drop(s);
	}
	stream_unref(s); /* the ref of this call */
}

static int fd_src_start(struct stream *s, void *src)
{
	struct fd_src *f = src;
	source_take(s);
	int r = ioloop_call(f->loop, fd_src_begin, f);
	if (r < 0)
		source_drop(s);
	return r;
}

static void fd_src_cancel(struct stream *s, void *src)
{
	struct fd_src *f = src;
	stream_ref(s);
	if (ioloop_call(f->loop, fd_src_cancel_in_loop, f) < 0)
		stream_unref(s); /* loop gone: nothing runs any more */
}

static void fd_src_resume_in_loop(void *arg)
{
	struct fd_src *f = arg;
	struct stream *s = f->s;
	fd_pump_resume(&f->pump);
	stream_unref(s); /* the ref of this call */
}

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
	free(f->path);
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

static struct stream *fd_src_new(struct ioloop *loop, const char *name, const char *path, int fd,
				 struct store *store)
{
	struct fd_src *f = calloc(1, sizeof(*f));
	if (!f || (path && !(f->path = strdup(path)))) {
		free(f);
		store_close(store);
		if (fd >= 0)
			close(fd);
		errno = ENOMEM;
		return NULL;
	}
	f->loop = loop;
	f->fd = fd;
	f->pump.fd = -1;
	/* On failure stream_new() has destroyed f already. */
	struct stream *s = stream_new(name, store, path ? &pipe_ops : &stdin_ops, f);
	if (s)
		f->s = s;
	return s;
}

struct stream *source_pipe_new(struct ioloop *loop, const char *name, const char *path,
			       struct store *store)
{
	return fd_src_new(loop, name, path, -1, store);
}

struct stream *source_stdin_new(struct ioloop *loop, const char *name, int fd, struct store *store)
{
	return fd_src_new(loop, name, NULL, fd, store);
}
