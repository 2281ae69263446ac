/*
 * stream_fetch.c - random access: the ranges a reader needs ahead of the
 * sequential fill (or evicted behind it) are asked of the source's
 * fetch(), and what it answers.
 *
 * Invariants (all under s->lock):
 *  - wanted holds the ranges asked of fetch(); a range is asked at most
 *    once until it leaves wanted (its fetch failed, the source gave it
 *    up with stream_unwant(), or its block was evicted).
 *  - Only bytes neither present nor wanted are asked, never past the
 *    announced length or store_limit, nor below drop_to (keep=).
 *  - fetch() is called with no lock held.
 */
#include "stream_int.h"

#include "streamfs/cache.h"

#include <errno.h>
#include <pthread.h>

/*
 * Under s->lock: add to wanted the gaps of [off, off+len) that are neither
 * present nor wanted, and return them in @ask (at most 8: more are asked
 * on the next read). The caller calls fetch() on them once unlocked.
 */
int want_locked(struct stream *s, uint64_t off, uint64_t len, struct range ask[8])
{
	int nask = 0;
	if (!stream_can_fetch(s) || len == 0)
		return 0;
	if (s->state != STREAM_RUNNING && !(s->state == STREAM_COMPLETE && s->evictable))
		return 0;
	if (s->cache && len > cache_window_max(s->cache))
		len = cache_window_max(s->cache);
	uint64_t end = off + len;
	if (s->length >= 0 && end > (uint64_t)s->length)
		end = (uint64_t)s->length;
	if (end > s->store_limit) /* nothing past it can be stored */
		end = s->store_limit;
	uint64_t a = off > s->drop_to ? off : s->drop_to;
	while (a < end && nask < 8) {
		/* The first byte neither present nor asked for... */
		for (;;) {
			uint64_t p = rangeset_run_end(&s->present, a);
			uint64_t w = rangeset_run_end(&s->wanted, p);
			if (w == a)
				break;
			a = w;
		}
		if (a >= end)
			break;
		/* ...up to the next byte that is. */
		uint64_t b = end;
		uint64_t np = rangeset_next_present(&s->present, a);
		uint64_t nw = rangeset_next_present(&s->wanted, a);
		if (np < b)
			b = np;
		if (nw < b)
			b = nw;
		/* Near the frontier the sequential fill is faster than a fetch,
		 * unless the budget has paused it; below the frontier, a
		 * missing byte was evicted: only a fetch brings it. */
		bool far = a < s->frontier || a - s->frontier >= s->fetch_distance ||
		           s->paused != CACHE_RUN;
		if (far && rangeset_add(&s->wanted, a, b) == 0) {
			ask[nask].start = a;
			ask[nask].end = b;
			nask++;
		}
		a = b;
	}
	return nask;
}

void fetch_asked(struct stream *s, const struct range *ask, int nask)
{
	for (int i = 0; i < nask; i++)
		s->ops->fetch(s, s->src, ask[i].start, ask[i].end - ask[i].start);
}

void stream_want(struct stream *s, uint64_t off, uint64_t len)
{
	struct range ask[8];
	pthread_mutex_lock(&s->lock);
	int nask = want_locked(s, off, len, ask);
	pthread_mutex_unlock(&s->lock);
	fetch_asked(s, ask, nask);
}

uint64_t stream_set_fetch_distance(struct stream *s, uint64_t bytes)
{
	/* Under a budget the fill cannot get further ahead than a window of
	 * it: a reader past that waiting for the fill could wait for good
	 * (the fill pauses when it has no room, and half a second of a fast
	 * download is far more than a small budget). */
	if (bytes != UINT64_MAX && s->cache && bytes > cache_window_max(s->cache))
		bytes = cache_window_max(s->cache);
	pthread_mutex_lock(&s->lock);
	s->fetch_distance = bytes;
	pthread_mutex_unlock(&s->lock);
	return bytes;
}

void stream_unwant(struct stream *s, uint64_t off, uint64_t len)
{
	pthread_mutex_lock(&s->lock);
	rangeset_remove(&s->wanted, off, off + len);
	pthread_mutex_unlock(&s->lock);
}

uint64_t stream_run_end(struct stream *s, uint64_t off)
{
	pthread_mutex_lock(&s->lock);
	uint64_t e = rangeset_run_end(&s->present, off);
	pthread_mutex_unlock(&s->lock);
	return e;
}

bool stream_held_reader_in(struct stream *s, uint64_t off, uint64_t end)
{
	bool found = false;
	pthread_mutex_lock(&s->lock);
	for (struct stream_waiter *w = s->waiters.next; !found && w != &s->waiters; w = w->next)
		found = w->held && w->need >= off && w->need < end;
	pthread_mutex_unlock(&s->lock);
	return found;
}

uint64_t stream_frontier(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t f = s->frontier;
	pthread_mutex_unlock(&s->lock);
	return f;
}

/* Under s->lock: does @w wait for bytes only the sequential fill brings? */
bool waits_for_fill(const struct stream *s, const struct stream_waiter *w)
{
	if (w->kind == STREAM_WAIT_SIZE)
		return false; /* the first response tells it */
	if (w->kind == STREAM_WAIT_END)
		return true;
	return w->need >= s->frontier && rangeset_run_end(&s->wanted, w->need) == w->need;
}

bool stream_hold_fill(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	bool waits = false;
	for (struct stream_waiter *w = s->waiters.next; !waits && w != &s->waiters; w = w->next)
		waits = waits_for_fill(s, w);
	s->fill_held = !waits;
	pthread_mutex_unlock(&s->lock);
	return !waits;
}

void stream_release_fill(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	s->fill_held = false;
	pthread_mutex_unlock(&s->lock);
}

bool stream_drops_bytes(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	bool drops = s->keep != 0;
	pthread_mutex_unlock(&s->lock);
	return drops;
}

void stream_fetch_failed(struct stream *s, uint64_t off, uint64_t len)
{
	struct stream_waiter ready = {.next = NULL};
	uint64_t end = off + len;
	pthread_mutex_lock(&s->lock);
	rangeset_remove(&s->wanted, off, end);
	struct stream_waiter *w = s->waiters.next;
	while (w != &s->waiters) {
		struct stream_waiter *next = w->next;
		if (w->kind != STREAM_WAIT_END && w->kind != STREAM_WAIT_SIZE && w->need >= off &&
		    w->need < end) {
			unlink_waiter(s, w);
			w->wstate = W_CLAIMED;
			w->result = -EIO;
			w->next = ready.next;
			ready.next = w;
		}
		w = next;
	}
	pthread_mutex_unlock(&s->lock);
	finish_ready(&ready);
}
