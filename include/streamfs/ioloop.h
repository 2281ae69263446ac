/*
 * ioloop.h - the one I/O thread that drives every source.
 *
 * An epoll loop with timers and a queue of calls. Sources never get a
 * thread of their own: a thousand streams cost a thousand descriptors and
 * one thread. Everything a source does with its descriptors happens in
 * this thread; other threads hand work over with ioloop_call().
 *
 * Thread rules: ioloop_call() may be called from any thread. ioloop_add,
 * ioloop_mod, ioloop_del and the timer functions only from the loop thread
 * (inside a callback or a call).
 */
#ifndef STREAMFS_IOLOOP_H
#define STREAMFS_IOLOOP_H

#include <stdbool.h>
#include <stdint.h>

struct ioloop;

struct ioloop_watch {
	int fd;
	void (*cb)(struct ioloop_watch *w, uint32_t events); /* EPOLLIN, EPOLLHUP, ... */
	void *data;
};

struct ioloop_timer {
	void (*cb)(struct ioloop_timer *t);
	void *data;
	/* private */
	uint64_t due_ms;
	struct ioloop_timer *next;
	bool armed;
};

/* Returns NULL with errno set. */
struct ioloop *ioloop_new(void);

/* Start the thread. Returns 0 or -errno. */
int ioloop_start(struct ioloop *l);

/* Run the calls already queued, stop the thread and join it. Later
 * ioloop_call()s fail with -ESHUTDOWN. Can't fail; idempotent. */
void ioloop_stop(struct ioloop *l);

/* Free a stopped (or never started) loop. */
void ioloop_free(struct ioloop *l);

/* Run fn(arg) in the loop thread soon, in FIFO order. Returns 0, -ENOMEM,
 * or -ESHUTDOWN (then fn will not run: the caller still owns arg). */
int ioloop_call(struct ioloop *l, void (*fn)(void *arg), void *arg);

/* True in the loop thread. */
bool ioloop_in_loop(const struct ioloop *l);

/* In the loop thread: does other work wait behind the callback running
 * now (events later in this batch, or queued calls)? A callback that
 * could go on for long uses it to let that work run first. */
bool ioloop_others_wait(struct ioloop *l);

/* Watch w->fd for @events (level-triggered). Returns 0 or -errno (-EPERM
 * for descriptors epoll cannot watch, such as regular files). */
int ioloop_add(struct ioloop *l, struct ioloop_watch *w, uint32_t events);
int ioloop_mod(struct ioloop *l, struct ioloop_watch *w, uint32_t events);
/* Stop watching. No callback for @w runs after this returns, even one
 * already reported in the current batch, so @w may be freed at once. */
void ioloop_del(struct ioloop *l, struct ioloop_watch *w);

/* (Re)arm @t to fire once, @ms from now; disarm. */
void ioloop_timer_arm(struct ioloop *l, struct ioloop_timer *t, uint64_t ms);
void ioloop_timer_disarm(struct ioloop *l, struct ioloop_timer *t);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t ioloop_now_ms(void);

#endif
