/*
 * sources.h - what the sources share, private to src/sources: the fd pump,
 * the book-keeping of running sources, and the way a source's start and
 * cancel reach the loop thread.
 *
 * The rule every source keeps (so that shutdown can wait for them, see
 * source_wait_all_done()): a source holds its stream with source_take()
 * from the moment it starts producing until it is done with it, and
 * lets go with exactly one source_drop(), in the loop thread.
 */
#ifndef STREAMFS_SOURCES_H
#define STREAMFS_SOURCES_H

#include "streamfs/ioloop.h"
#include "streamfs/stream.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

/*
 * The fd pump (pump.c): moves bytes from a descriptor into a stream at
 * its sequential frontier, in the loop thread. Descriptors epoll can
 * watch (pipes, FIFOs, ttys, sockets) are read when readable; others
 * (regular files, /dev/null) in bounded steps queued with ioloop_call(),
 * so one big file never starves the loop. on_done() is called once, in
 * the loop thread, when the pump stops by itself: err 0 at end of file,
 * ECANCELED when the stream stopped running (cancelled, or failed by its
 * store), or the read error (positive errno). It is not called after
 * fd_pump_stop().
 */
struct fd_pump {
	struct ioloop_watch watch;
	struct ioloop *loop;
	struct stream *s;
	int fd;
	bool nonblock; /* fd is O_NONBLOCK: read until EAGAIN, else once per event */
	bool polled;   /* in epoll (else stepped) */
	bool running;
	bool paused; /* no room in the store: not reading until resumed */
	void (*on_done)(struct fd_pump *p, int err);
	void *data;
};

/* Start pumping @fd (owned by the pump from now on; closed when it
 * stops). Loop thread only. Returns 0 or -errno (then @fd is closed). */
int fd_pump_start(struct fd_pump *p, struct ioloop *loop, struct stream *s, int fd,
                  void (*on_done)(struct fd_pump *p, int err), void *data);

/* Stop without calling on_done and close the fd. Loop thread only;
 * idempotent. */
void fd_pump_stop(struct fd_pump *p);

/* The stream got room again after a pause (stream_fill_fd said
 * -ENOBUFS): read again. Loop thread only; a no-op if not paused. */
void fd_pump_resume(struct fd_pump *p);

/*
 * Running sources (registry.c): source_take() is stream_ref() for a
 * source that starts producing, source_drop() its stream_unref() when it
 * is done. Any thread.
 */
void source_take(struct stream *s);
void source_drop(struct stream *s);

/*
 * A source's start (its stream_source_ops.start): take @s and run
 * @begin(@src) in the loop thread, which from then on owes the one
 * source_drop(@s). Returns 0, or -errno if the loop cannot take the call
 * (then @s is not taken and @begin does not run).
 */
int source_start_in_loop(struct stream *s, struct ioloop *loop, void (*begin)(void *src),
                         void *src);

/*
 * Hand @fn(@src) to the loop thread with a reference on @s for the call:
 * @fn ends with stream_unref(@s). For a source's cancel, and for work a
 * reader's thread queues. Returns 0, or -errno if the loop cannot take
 * the call (then @fn does not run and no reference is held).
 */
int source_call_in_loop(struct stream *s, struct ioloop *loop, void (*fn)(void *src), void *src);

/* pthread_mutex_lock/unlock that abort on an error: one means a broken
 * lock (uninitialised, not ours, deadlock), and nothing sane follows. */
static inline void source_mutex_lock(pthread_mutex_t *m)
{
	if (pthread_mutex_lock(m) != 0)
		abort();
}

static inline void source_mutex_unlock(pthread_mutex_t *m)
{
	if (pthread_mutex_unlock(m) != 0)
		abort();
}

#endif
