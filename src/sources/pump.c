/*
 * pump.c - the fd pump (see sources.h): bytes from a descriptor into a
 * stream at its sequential frontier, for cmd: (the command's stdout),
 * pipe: and stdin.
 *
 * Bytes move with read() into a buffer and pwrite() into the store (see
 * store_fill_fd() for why not splice). Each wake-up moves at most
 * PUMP_BUDGET bytes, so one fast source never starves the other streams
 * of the one loop thread. Everything here runs in the loop thread.
 */
#include "sources.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#define PUMP_CHUNK (1u << 20)  /* one read */
#define PUMP_BUDGET (8u << 20) /* per wake-up, so other streams get their turn */

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
	assert(ioloop_in_loop(p->loop));
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
	assert(ioloop_in_loop(p->loop));
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
	assert(ioloop_in_loop(loop));
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
	assert(ioloop_in_loop(p->loop));
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
	assert(ioloop_in_loop(p->loop));
	p->running = false;
	if (p->polled && !p->paused)
		ioloop_del(p->loop, &p->watch);
	close(p->fd);
	p->fd = -1;
}
