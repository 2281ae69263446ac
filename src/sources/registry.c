/*
 * registry.c - the running sources, counted so that shutdown can wait for
 * them to let go of their streams (source_wait_all_done()), and the way a
 * source's start and cancel reach the loop thread (see sources.h).
 *
 * One counter under one lock: a source counts from source_take() to its
 * source_drop(). Shutdown stops the sources, then waits (bounded) for the
 * counter to reach zero before it frees the streams.
 */
#include "sources.h"
#include "streamfs/source.h"

#include <assert.h>
#include <errno.h>
#include <time.h>

static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t busy_cond = PTHREAD_COND_INITIALIZER;
static unsigned busy; /* protected by busy_lock */

void source_take(struct stream *s)
{
	stream_ref(s);
	source_mutex_lock(&busy_lock);
	busy++;
	source_mutex_unlock(&busy_lock);
}

void source_drop(struct stream *s)
{
	source_mutex_lock(&busy_lock);
	assert(busy > 0); /* a drop without its take */
	if (--busy == 0 && pthread_cond_broadcast(&busy_cond) != 0)
		abort();
	source_mutex_unlock(&busy_lock);
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
	source_mutex_lock(&busy_lock);
	while (busy > 0) {
		int r = pthread_cond_timedwait(&busy_cond, &busy_lock, &dl);
		if (r == ETIMEDOUT)
			break;
		if (r != 0)
			abort();
	}
	bool done = busy == 0;
	source_mutex_unlock(&busy_lock);
	return done;
}

int source_start_in_loop(struct stream *s, struct ioloop *loop, void (*begin)(void *src), void *src)
{
	source_take(s);
	int r = ioloop_call(loop, begin, src);
	if (r < 0)
		source_drop(s);
	return r;
}

int source_call_in_loop(struct stream *s, struct ioloop *loop, void (*fn)(void *src), void *src)
{
	stream_ref(s);
	int r = ioloop_call(loop, fn, src);
	if (r < 0)
		stream_unref(s);
	return r;
}
