/*
 * stream_write.c - producing: the source's writes (stream_write,
 * stream_append, stream_fill_fd) reach the store here and become present.
 *
 * Invariants (see also stream.c):
 *  - A byte is marked present only after it reached the store, and only
 *    by mark_present(), which also extends the frontier and wakes the
 *    waiters it answers. Readers see a write all at once.
 *  - A byte a reader may have seen is never rewritten: a write stores
 *    only the parts of its range that are not present yet (a reader may
 *    be copying the rest out at that moment).
 *  - With a cache, the blocks of a write are held before it is stored
 *    (stream_cache.c), and pinned until it is marked present, so no
 *    eviction punches a block between its reservation and the write.
 *  - store_limit only goes down: the store refused a byte there (EFBIG,
 *    its file system's maximum file size or RLIMIT_FSIZE), so no byte at
 *    or past it can ever be present.
 *  - No store I/O runs under the stream lock.
 */
#include "stream_int.h"

#include "log.h"
#include "streamfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

int present_add(struct stream *s, uint64_t off, uint64_t end, struct stream_waiter *ready)
{
	int r = rangeset_add(&s->present, off, end);
	if (r == 0) {
		rangeset_add(&s->seen, off, end); /* only for status */
		if (end > s->top)
			s->top = end;
		s->frontier = rangeset_run_end(&s->present, s->frontier);
		blk_touch(s, off, end, false);
		collect(s, ready, false, off, end);
	}
	return r;
}

/*
 * Mark [off, off+n) present after the bytes reached the store. Clips at
 * the announced length (and fails the stream there if the source sent
 * more). Returns 0 or -ECANCELED / -EFBIG / -ENOMEM.
 */
static int mark_present(struct stream *s, uint64_t off, uint64_t n, bool seq, struct pin *pin)
{
	struct stream_waiter ready = {.next = NULL};
	int r = 0;
	bool too_long = false;
	char msg[128];

	pthread_mutex_lock(&s->lock);
	if (pin)
		pin_del(s, pin);
	if (!accepts_writes(s)) {
		pthread_mutex_unlock(&s->lock);
		return -ECANCELED;
	}
	uint64_t end = off + n;
	if (s->length >= 0 && end > (uint64_t)s->length) {
		end = off < (uint64_t)s->length ? (uint64_t)s->length : off;
		too_long = true;
	}
	if (seq)
		s->seq_pos = end;
	if (end > off && off < s->drop_to) /* keep=: never bring back dropped bytes */
		off = s->drop_to < end ? s->drop_to : end;
	if (end > off)
		r = present_add(s, off, end, &ready);
	if (too_long) {
		snprintf(msg, sizeof(msg), "the source sent more than its announced %lld bytes",
		         (long long)s->length);
		set_failed(s, STREAM_FAILED, EFBIG, msg, &ready);
		r = -EFBIG;
	} else if (r < 0) {
		set_failed(s, STREAM_FAILED, ENOMEM, "out of memory for the range map", &ready);
	}
	bool drop = s->keep && s->frontier - s->drop_to >= s->keep + BLK;
	bool unpinned = s->unpinned;
	s->unpinned = false;
	pthread_mutex_unlock(&s->lock);
	if (r < 0)
		log_error("%s: failed: %s", s->name, too_long ? msg : strerror(-r));
	finish_ready(&ready);
	if (unpinned && s->cache) /* its blocks may be evicted now: tell who waits */
		cache_poll(s->cache);
	if (drop)
		drop_old(s);
	return r;
}

static bool running(struct stream *s, uint64_t *seq_pos)
{
	pthread_mutex_lock(&s->lock);
	bool ok = s->state == STREAM_RUNNING;
	if (seq_pos)
		*seq_pos = s->seq_pos;
	pthread_mutex_unlock(&s->lock);
	return ok;
}

static void store_failed(struct stream *s, int err)
{
	stream_fail(s, err, "store: %s", strerror(err));
}

/*
 * How many bytes of @buf the store takes at @off, given that it refuses all
 * @len with EFBIG (the write crosses the largest file size it allows). A
 * longer prefix fails exactly when it crosses that limit, so bisection
 * finds it in a handful of writes, once per stream. Returns the count, or
 * another -errno.
 */
static int64_t storable_prefix(struct stream *s, const char *buf, size_t len, uint64_t off)
{
	size_t lo = 0, hi = len; /* [off, off+lo) is stored, [off, off+hi) refused */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		int r = store_pwrite(s->store, buf, mid, off);
		if (r == 0)
			lo = mid;
		else if (r == -EFBIG)
			hi = mid;
		else
			return r;
	}
	return (int64_t)lo;
}

/*
 * The store refused the byte at @lim of a write that began at @off; the
 * bytes before it reached the store. The sequential fill cannot go on: it
 * fails there, like on any store error. A write out of order (a range a
 * reader asked for) loses only what lies past the limit: reads there get
 * EFBIG and the stream goes on below it. Returns -EFBIG (or -ECANCELED).
 */
static int refused_from(struct stream *s, uint64_t off, uint64_t lim, bool seq)
{
	if (lim > off) {
		int r = mark_present(s, off, lim - off, seq, NULL);
		if (r < 0)
			return r;
	}
	if (seq) {
		store_failed(s, EFBIG);
		return -EFBIG;
	}
	struct stream_waiter ready = {.next = NULL};
	pthread_mutex_lock(&s->lock);
	bool lower = s->state == STREAM_RUNNING && lim < s->store_limit;
	if (lower) {
		s->store_limit = lim;
		collect(s, &ready, true, 0, 0);
	}
	pthread_mutex_unlock(&s->lock);
	if (lower)
		log_warn("%s: the store cannot hold bytes from %llu on (%s): reads there fail",
		         s->name, (unsigned long long)lim, strerror(EFBIG));
	finish_ready(&ready);
	return -EFBIG;
}

/* The store is out of space: pause (the budget resumes us), or without a
 * budget fail as before. Returns the error for the producer. */
static int store_full(struct stream *s, int err)
{
	if (!s->cache) {
		store_failed(s, err);
		return -err;
	}
	unsigned seen = resume_count(s);
	cache_pause(&s->cc, CACHE_NOSPACE);
	set_paused(s, CACHE_NOSPACE, seen);
	return -ENOBUFS;
}

static bool out_of_space(int err)
{
	return err == ENOSPC || err == EDQUOT;
}

/*
 * Reserve the blocks of [off, off+len) (-ENOBUFS: not all of them; the
 * prefix that got room may have been stored), then store the parts of it
 * that are not present yet and
 * mark the whole range present in one step: a byte a reader may have seen
 * is never rewritten (a reader may be copying it out at that moment), and
 * readers see the write all at once. Pinned meanwhile, so no eviction
 * punches a block between its reservation and the write.
 */
static int write_missing(struct stream *s, uint64_t off, const void *buf, size_t len, bool seq,
                         unsigned flags, size_t *stored)
{
	*stored = 0;
	const char *p = buf;
	uint64_t end = off + len, a = off;
	struct pin pin = {.a = off, .b = end};
	pthread_mutex_lock(&s->lock);
	bool ok = accepts_writes(s);
	if (ok)
		pin_add(s, &pin);
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return -ECANCELED;
	int64_t held = hold_range(s, off, end, flags);
	if (held < 0) {
		unpin(s, &pin);
		if (held != -ENOBUFS)
			store_failed(s, (int)-held);
		return (int)held;
	}
	/* Room for a prefix only: store it anyway, say how much, and return
	 * -ENOBUFS; the caller offers the rest later. A reader held on the
	 * first block may wait for exactly these bytes, and the block past
	 * them may be the one its pin keeps from the budget: all or nothing,
	 * a 128 KiB piece across a block edge stalled a 1 MiB budget for
	 * good. (Offering the whole piece again is not enough: by then its
	 * first block may be evicted, and needing it again stalls the same
	 * way.) */
	bool partial = (uint64_t)held < end;
	if (partial && seq) {
		/* stream_append() takes all or nothing: its caller offers the
		 * same bytes again at the position it then finds. */
		unpin(s, &pin);
		return -ENOBUFS;
	}
	end = (uint64_t)held;
	len = (size_t)(end - off);
	while (a < end) {
		pthread_mutex_lock(&s->lock);
		ok = accepts_writes(s);
		uint64_t limit = s->store_limit;
		struct persist_entry *pe = s->persist;
		a = rangeset_run_end(&s->present, a); /* skip what is present */
		uint64_t b = a < end ? rangeset_next_present(&s->present, a) : end;
		pthread_mutex_unlock(&s->lock);
		if (!ok) {
			unpin(s, &pin);
			return -ECANCELED;
		}
		if (a >= end)
			break;
		if (b > end)
			b = end;
		int r = -EFBIG; /* past a known limit: not even tried */
		if (pe && a < limit)
			persist_before_write(pe, s, a, b);
		if (a < limit)
			r = store_pwrite(s->store, p + (a - off), (size_t)(b - a), a);
		if (r == -EFBIG) {
			int64_t k = 0;
			if (a < limit)
				k = storable_prefix(s, p + (a - off), (size_t)(b - a), a);
			if (k >= 0) {
				unpin(s, &pin);
				return refused_from(s, off, a + (uint64_t)k, seq);
			}
			r = (int)k;
		}
		if (r < 0) {
			unpin(s, &pin);
			if (out_of_space(-r))
				return store_full(s, -r);
			store_failed(s, -r);
			return r;
		}
		a = b;
	}
	int r = mark_present(s, off, len, seq, &pin);
	if (r == 0)
		*stored = len;
	return r == 0 && partial ? -ENOBUFS : r;
}

int stream_write(struct stream *s, uint64_t off, const void *buf, size_t len)
{
	return stream_write_flags(s, off, buf, len, 0, NULL);
}

int stream_write_flags(struct stream *s, uint64_t off, const void *buf, size_t len, unsigned flags,
                       size_t *stored)
{
	size_t n;
	return write_missing(s, off, buf, len, false, flags & STREAM_AHEAD ? CACHE_AHEAD : 0,
	                     stored ? stored : &n);
}

int stream_append(struct stream *s, const void *buf, size_t len)
{
	uint64_t pos;
	if (!running(s, &pos))
		return -ECANCELED;
	size_t stored;
	return write_missing(s, pos, buf, len, true, 0, &stored);
}

ssize_t stream_fill_fd(struct stream *s, int fd, size_t max)
{
	uint64_t pos;
	if (!running(s, &pos))
		return -ECANCELED;
	/* Room first: what is read from @fd must have a place to go. Only
	 * up to the end of the block at pos: a block reserved for bytes that
	 * never come (the end of the stream) would be held for nothing. */
	if (s->cache && max > BLK - pos % BLK)
		max = (size_t)(BLK - pos % BLK);
	int64_t held = hold_range(s, pos, pos + max, 0);
	if (held < 0) {
		if (held != -ENOBUFS)
			store_failed(s, (int)-held);
		return held;
	}
	max = (size_t)((uint64_t)held - pos);
	ssize_t n = store_fill_fd(s->store, fd, max, pos);
	if (n < 0) {
		if (store_error_is_store(n)) {
			int e = store_error_errno(n);
			if (out_of_space(e))
				return store_full(s, e);
			store_failed(s, e);
			return -e;
		}
		return n;
	}
	if (n == 0)
		return 0;
	int r = mark_present(s, pos, (uint64_t)n, true, NULL);
	return r < 0 ? r : n;
}
