/*
 * stream_cache.c - a stream's side of the store budget (cache.h): the
 * table of the blocks it holds, the pins that keep evictions off bytes in
 * use, the cache client callbacks (candidates, evict, resume), room for
 * parked readers, and the keep= drops.
 *
 * Invariants (all under s->lock):
 *  - With a cache, every block holding a present byte is held (reserved
 *    in the budget and allocated in the store), and counted once in
 *    held_blocks.
 *  - Present bytes leave only by eviction or a keep= drop, whole blocks
 *    at a time, never while a pin (a copy or a write in progress) or a
 *    parked waiter covers them (blk_pinned() says which waiters count).
 *  - Blocks below drop_to are never held again.
 *  - A pause (s->paused) set before the latest resume is stale and not
 *    shown: resumes counts them.
 *
 * No I/O and no callback runs under the stream lock, except the hole
 * punch of an eviction or drop: it must happen before any writer can
 * reserve that block again.
 */
#include "stream_int.h"

#include "log.h"
#include "streamfs/store.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- blocks held in the budget ----------------------------------------- */

/* The slot of block @b, or NULL if the table does not reach it. */
static uint64_t *blk_slot(struct stream *s, uint64_t b)
{
	if (b < s->blk_base || b - s->blk_base >= s->blk_n)
		return NULL;
	return &s->blk[b - s->blk_base];
}

static bool blk_held(struct stream *s, uint64_t b)
{
	uint64_t *e = blk_slot(s, b);
	return e && *e;
}

/* Make the table reach block @b (>= blk_base). Returns 0 or -ENOMEM. */
static int blk_grow(struct stream *s, uint64_t b)
{
	uint64_t need = b - s->blk_base + 1;
	if (need <= s->blk_n)
		return 0;
	uint64_t n = s->blk_n ? s->blk_n : 64;
	while (n < need) {
		if (n > UINT64_MAX / 2)
			return -ENOMEM;
		n *= 2;
	}
	if (n > SIZE_MAX / sizeof(*s->blk))
		return -ENOMEM;
	uint64_t *v = realloc(s->blk, (size_t)n * sizeof(*v));
	if (!v)
		return -ENOMEM;
	memset(v + s->blk_n, 0, (size_t)(n - s->blk_n) * sizeof(*v));
	s->blk = v;
	s->blk_n = n;
	return 0;
}

/* keep=: blocks below drop_to are never held again; move the table up
 * when more than half of it lies there. */
static void blk_compact(struct stream *s)
{
	uint64_t first = s->drop_to / BLK;
	/* No table yet (nothing ever held): nothing to move, and memmove()
	 * must not see its NULL. */
	if (!s->blk_n || first <= s->blk_base || first - s->blk_base < s->blk_n / 2)
		return;
	uint64_t k = first - s->blk_base;
	if (k > s->blk_n)
		k = s->blk_n;
	memmove(s->blk, s->blk + k, (size_t)(s->blk_n - k) * sizeof(*s->blk));
	memset(s->blk + (s->blk_n - k), 0, (size_t)k * sizeof(*s->blk));
	s->blk_base += k;
}

/*
 * Mark the blocks of [a, b) used now. A write clears BLK_READ; a read
 * sets it on the blocks it read to their end: a block a reader is still
 * going through must not look consumed to a speculative fill (that would
 * evict it under the reader). Returns true if a block of an evictable
 * stream became read. Under the lock.
 */
bool blk_touch(struct stream *s, uint64_t a, uint64_t b, bool read)
{
	if (!s->cache || a >= b)
		return false;
	uint64_t t = cache_tick(s->cache) << 1;
	bool first = false;
	for (uint64_t i = a / BLK; i <= (b - 1) / BLK; i++) {
		uint64_t *e = blk_slot(s, i);
		if (!e || !*e)
			continue;
		uint64_t flag = 0;
		if (read && ((*e & BLK_READ) || (i + 1) * BLK <= b)) {
			first |= !(*e & BLK_READ);
			flag = BLK_READ;
		}
		*e = t | flag;
	}
	return first && s->evictable;
}

/*
 * Does a pin or a parked reader cover block @b? For eviction only readers
 * whose blocks are reserved (w->held) count: a reader that got no room
 * pins nothing, so readers that together need more than the budget
 * cannot hold each other's bytes hostage (each admitted one can always
 * be filled). keep= drops respect every parked reader. Under the lock.
 */
static bool blk_pinned(struct stream *s, uint64_t b, bool held_only)
{
	uint64_t a = b * BLK, e = a + BLK;
	if (s->whole_holds)
		return true;
	for (struct pin *p = s->pins; p; p = p->next)
		if (p->a < e && p->b > a)
			return true;
	for (struct stream_waiter *w = s->waiters.next; w != &s->waiters; w = w->next) {
		if (w->kind == STREAM_WAIT_END || w->kind == STREAM_WAIT_SIZE)
			continue;
		if ((w->held || !held_only) && w->off < e && w->off + w->len > a)
			return true;
	}
	return false;
}

void pin_add(struct stream *s, struct pin *p)
{
	p->next = s->pins;
	s->pins = p;
}

void pin_del(struct stream *s, struct pin *p)
{
	for (struct pin **q = &s->pins; *q; q = &(*q)->next) {
		if (*q == p) {
			*q = p->next;
			return;
		}
	}
}

void unpin(struct stream *s, struct pin *p)
{
	pthread_mutex_lock(&s->lock);
	pin_del(s, p);
	pthread_mutex_unlock(&s->lock);
}

/*
 * Remove block @b from the stream: from present and wanted (so a read
 * asks for it again), punched out of the store, no longer held. Returns
 * the present bytes it had, or -1 if the maps could not be changed (no
 * memory to split a range): then nothing happened. Under the lock.
 */
static int64_t blk_remove(struct stream *s, uint64_t b)
{
	uint64_t a = b * BLK, before = s->present.total;
	if (rangeset_remove(&s->wanted, a, a + BLK) < 0 ||
	    rangeset_remove(&s->present, a, a + BLK) < 0)
		return -1;
	/* Under the lock on purpose: once the block is no longer held a
	 * writer may reserve and fill it, and a late punch would wipe that. */
	int r = store_punch(s->store, a, BLK);
	if (r < 0)
		log_warn("%s: cannot punch a hole at byte %llu: %s", s->name, (unsigned long long)a,
		         strerror(-r));
	uint64_t *e = blk_slot(s, b);
	if (e && *e) {
		*e = 0;
		s->held_blocks--;
	}
	return (int64_t)(before - s->present.total);
}

static bool evictable_now(const struct stream *s)
{
	return s->evictable && (s->state == STREAM_RUNNING || s->state == STREAM_COMPLETE);
}

static struct stream *cc_stream(struct cache_client *c)
{
	return (struct stream *)((char *)c - offsetof(struct stream, cc));
}

static bool cc_get(struct cache_client *c)
{
	struct stream *s = cc_stream(c);
	int r = atomic_load(&s->refs);
	while (r > 0)
		if (atomic_compare_exchange_weak(&s->refs, &r, r + 1))
			return true;
	return false;
}

static void cc_put(struct cache_client *c)
{
	stream_unref(cc_stream(c));
}

static void cc_resume(struct cache_client *c)
{
	struct stream *s = cc_stream(c);
	pthread_mutex_lock(&s->lock);
	s->paused = CACHE_RUN;
	s->resumes++;
	pthread_mutex_unlock(&s->lock);
	admit_waiters(s);
	if (s->ops->resume)
		s->ops->resume(s, s->src);
}

static size_t cc_candidates(struct cache_client *c, struct cache_cand *out, size_t max)
{
	struct stream *s = cc_stream(c);
	size_t k = 0;
	pthread_mutex_lock(&s->lock);
	for (uint64_t i = 0; evictable_now(s) && i < s->blk_n && k < max; i++) {
		uint64_t e = s->blk[i];
		if (!e || blk_pinned(s, s->blk_base + i, true))
			continue;
		out[k].block = s->blk_base + i;
		out[k].tick = e >> 1;
		out[k].read = e & BLK_READ;
		k++;
	}
	pthread_mutex_unlock(&s->lock);
	return k;
}

static bool blk_wanted_by_reader(struct stream *s, uint64_t b);
static bool fill_awaited(struct stream *s, uint64_t b);

static bool cc_evict(struct cache_client *c, uint64_t b, uint64_t tick, bool *reask)
{
	struct stream *s = cc_stream(c);
	bool done = false;
	pthread_mutex_lock(&s->lock);
	uint64_t *e = blk_slot(s, b);
	if (evictable_now(s) && e && *e && (*e >> 1) == tick && !blk_pinned(s, b, true)) {
		int64_t n = blk_remove(s, b);
		if (n >= 0) {
			s->evicted += (uint64_t)n;
			done = true;
			*reask = blk_wanted_by_reader(s, b);
		}
	}
	pthread_mutex_unlock(&s->lock);
	return done;
}

/*
 * A reader of the store's file sees its holes as zeros, not as missing
 * bytes: while one may read, nothing is evicted (blk_pinned()). The store
 * file must also end where the stream does: such a reader reads up to the
 * file's size, not the stream's. fstat() with no lock held.
 */
int stream_hold_whole(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	bool ok = s->state == STREAM_COMPLETE && s->length >= 0 && s->drop_to == 0 &&
	          rangeset_contains(&s->present, 0, (uint64_t)s->length);
	if (ok)
		s->whole_holds++;
	uint64_t len = (uint64_t)s->length;
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return -1;
	int fd = store_fd(s->store);
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == len)
		return fd;
	stream_release_whole(s);
	return -1;
}

void stream_release_whole(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	assert(s->whole_holds > 0);
	bool freed = --s->whole_holds == 0 && evictable_now(s);
	pthread_mutex_unlock(&s->lock);
	/* Its blocks may be evicted again: a stream waiting for room may
	 * have some now. */
	if (freed && s->cache)
		cache_poll(s->cache);
}

void stream_reask(struct stream *s)
{
	admit_waiters(s);
}

/* An eviction took bytes a parked reader waits for: ask again. */
static void cc_reask(struct cache_client *c)
{
	admit_waiters(cc_stream(c));
}

/* Once a second (the cache's backstop): see admit_lost(). */
static void cc_recheck(struct cache_client *c)
{
	admit_lost(cc_stream(c));
}

void stream_set_cache(struct stream *s, struct cache *ca)
{
	s->cache = ca;
	s->cc.get = cc_get;
	s->cc.put = cc_put;
	s->cc.resume = cc_resume;
	s->cc.candidates = cc_candidates;
	s->cc.evict = cc_evict;
	s->cc.reask = cc_reask;
	s->cc.recheck = cc_recheck;
	cache_attach(ca, &s->cc);
}

void stream_set_keep(struct stream *s, uint64_t bytes)
{
	pthread_mutex_lock(&s->lock);
	s->keep = bytes;
	pthread_mutex_unlock(&s->lock);
}

void stream_set_evictable(struct stream *s, bool on)
{
	pthread_mutex_lock(&s->lock);
	on = on && !s->keep;
	s->evictable = on;
	pthread_mutex_unlock(&s->lock);
	if (s->cache)
		cache_set_evictable(&s->cc, on);
}

/* Does a parked reader wait for bytes of block @b? Under the lock. */
static bool blk_wanted_by_reader(struct stream *s, uint64_t b)
{
	uint64_t a = b * BLK, e = a + BLK;
	for (struct stream_waiter *w = s->waiters.next; w != &s->waiters; w = w->next) {
		if (w->kind == STREAM_WAIT_END)
			continue;
		uint64_t lo = w->kind == STREAM_WAIT_SIZE ? 0 : w->need;
		uint64_t hi = w->kind == STREAM_WAIT_SIZE ? 1 : w->off + w->len;
		if (lo < e && hi > a)
			return true;
	}
	return false;
}

/*
 * Does a parked reader wait for the fill to come through block @b: its
 * first missing byte lies past the block, nearer than the fetch distance
 * (so no fetch of its own brings it)? Then the fill's bytes up to it are
 * not speculative either: held to "evict only what was read", the fill
 * could stall for good in front of that reader under a small budget.
 * Under the lock.
 */
static bool fill_awaited(struct stream *s, uint64_t b)
{
	uint64_t a = b * BLK;
	for (struct stream_waiter *w = s->waiters.next; w != &s->waiters; w = w->next) {
		if (w->kind == STREAM_WAIT_END || w->kind == STREAM_WAIT_SIZE)
			continue;
		if (w->need >= a && w->need - a < s->fetch_distance)
			return true;
	}
	return false;
}

unsigned resume_count(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	unsigned n = s->resumes;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Show the pause, unless a resume came since @seen (then it is over). */
void set_paused(struct stream *s, enum cache_pause why, unsigned seen)
{
	pthread_mutex_lock(&s->lock);
	if (s->resumes == seen)
		s->paused = why;
	uint64_t f = s->frontier;
	pthread_mutex_unlock(&s->lock);
	log_debug("%s: paused at frontier %llu: %s", s->name, (unsigned long long)f,
	          cache_pause_text(why));
}

/*
 * Reserve and allocate block @b. Returns 0, -ENOBUFS (no room: paused,
 * the source will be resumed), or another store error.
 */
static int reserve_block(struct stream *s, uint64_t b, unsigned flags)
{
	for (int tries = 0;; tries++) {
		enum cache_pause why = CACHE_RUN;
		unsigned seen = resume_count(s);
		if (cache_reserve(&s->cc, flags, &why) < 0) {
			set_paused(s, why, seen);
			return -ENOBUFS;
		}
		/* Allocating twice is harmless; holding twice is not: check
		 * again under the lock after the allocation. */
		int r = store_alloc(s->store, b * BLK, BLK);
		if (r == -EFBIG)
			r = 0; /* past the largest file: the write finds the exact byte */
		if (r == 0) {
			pthread_mutex_lock(&s->lock);
			bool dup = blk_held(s, b);
			if (!dup)
				r = blk_grow(s, b);
			if (!dup && r == 0) {
				s->blk[b - s->blk_base] = cache_tick(s->cache) << 1;
				s->held_blocks++;
			}
			pthread_mutex_unlock(&s->lock);
			if (!dup && r == 0) {
				cache_allocated(&s->cc);
				return 0;
			}
			cache_unreserve(&s->cc, 0);
			if (dup)
				return 0;
			return r;
		}
		bool evicted = cache_unreserve(&s->cc, -r);
		if (r != -ENOSPC && r != -EDQUOT)
			return r;
		if (evicted && tries < 4)
			continue;
		seen = resume_count(s);
		cache_pause(&s->cc, CACHE_NOSPACE);
		set_paused(s, CACHE_NOSPACE, seen);
		return -ENOBUFS;
	}
}

/*
 * Hold every block of [off, end). Returns @end, the start of the first
 * block that could not be had if some could, or -ENOBUFS / a store error
 * if the first one could not.
 */
int64_t hold_range(struct stream *s, uint64_t off, uint64_t end, unsigned flags)
{
	if (!s->cache || end <= off)
		return (int64_t)end;
	for (uint64_t b = off / BLK; b <= (end - 1) / BLK; b++) {
		pthread_mutex_lock(&s->lock);
		bool held = blk_held(s, b);
		unsigned f = flags;
		/* Only for a block to reserve: both walk the parked readers,
		 * and a fill writes into blocks it already holds most of the
		 * time. */
		if (!held && (f & CACHE_AHEAD) &&
		    (blk_wanted_by_reader(s, b) || fill_awaited(s, b)))
			f &= ~CACHE_AHEAD; /* a reader waits for it: not speculative */
		pthread_mutex_unlock(&s->lock);
		if (held)
			continue;
		int r = reserve_block(s, b, f);
		if (r < 0)
			return b * BLK > off ? (int64_t)(b * BLK) : r;
	}
	return (int64_t)end;
}

bool hold_for_reader(struct stream *s, struct pin *p)
{
	if (!s->cache || p->b <= p->a)
		return true;
	pthread_mutex_lock(&s->lock);
	pin_add(s, p);
	pthread_mutex_unlock(&s->lock);
	return hold_range(s, p->a, p->b, 0) >= (int64_t)p->b;
}

bool range_held(struct stream *s, uint64_t a, uint64_t b)
{
	if (!s->cache || b <= a)
		return true;
	for (uint64_t i = a / BLK; i <= (b - 1) / BLK; i++)
		if (!blk_held(s, i))
			return false;
	return true;
}

/* The stream ended: blocks reserved past its last byte (a fill reserves
 * before it reads, and may read the end of file) are given back. */
void release_past_end(struct stream *s)
{
	if (!s->cache)
		return;
	uint64_t released = 0;
	pthread_mutex_lock(&s->lock);
	uint64_t first = (s->top + BLK - 1) / BLK;
	for (uint64_t i = first > s->blk_base ? first - s->blk_base : 0; i < s->blk_n; i++) {
		if (s->blk[i] && !blk_pinned(s, s->blk_base + i, false) &&
		    blk_remove(s, s->blk_base + i) >= 0)
			released++;
	}
	pthread_mutex_unlock(&s->lock);
	cache_release(&s->cc, released);
}

/* keep=: drop the whole blocks older than the last s->keep bytes. */
void drop_old(struct stream *s)
{
	uint64_t released = 0;
	pthread_mutex_lock(&s->lock);
	while (s->keep && s->frontier - s->drop_to >= s->keep + BLK) {
		uint64_t b = s->drop_to / BLK;
		if (blk_pinned(s, b, false))
			break; /* a reader is copying it: next time */
		bool held = blk_held(s, b);
		int64_t n = blk_remove(s, b);
		if (n < 0)
			break;
		s->dropped += (uint64_t)n;
		released += held;
		s->drop_to += BLK;
	}
	blk_compact(s);
	pthread_mutex_unlock(&s->lock);
	if (s->cache)
		cache_release(&s->cc, released);
}

/* ---- room for readers ------------------------------------------------- */

/*
 * The end of the range a reader of [off, off+len) may need room for, or
 * @off if it needs none (not evictable, all present, past the end).
 * Under the lock.
 */
uint64_t room_needed(struct stream *s, const struct stream_waiter *w)
{
	if (!s->cache || !s->evictable || w->kind == STREAM_WAIT_END ||
	    w->kind == STREAM_WAIT_SIZE || !accepts_writes(s))
		return w->off;
	uint64_t end = w->off + w->len;
	if (s->length >= 0 && end > (uint64_t)s->length)
		end = (uint64_t)s->length;
	if (end <= w->off || rangeset_contains(&s->present, w->off, end))
		return w->off;
	return end;
}

/*
 * Reserve the blocks of parked readers that have none yet (they got no
 * room when they parked), and ask the source for what they miss: their
 * bytes may have been evicted meanwhile. After a resume, and by a reader
 * that a resume passed by while it was parking.
 */
static void admit(struct stream *s, bool lost_only)
{
	struct range todo[16];
	int n = 0;
	pthread_mutex_lock(&s->lock);
	bool complete = s->state == STREAM_COMPLETE;
	/* Readers that hold their room first: they need no more of it, only
	 * their bytes asked for again, and a reader without room must not
	 * keep them waiting (the budget may be theirs alone). */
	for (int held = 1; held >= 0; held--) {
		for (struct stream_waiter *w = s->waiters.next; w != &s->waiters && n < 16;
		     w = w->next) {
			if (w->held != held)
				continue;
			if (lost_only && !complete && w->need >= s->frontier && s->fetch_distance &&
			    s->paused == CACHE_RUN)
				continue; /* not lost: on its way, or the source's to fail */
			/* Not only those that got no room when they parked: a
			 * block reserved before its reader was on the list (so
			 * not pinned yet) may have been evicted since, and its
			 * fetch given up. */
			uint64_t end = room_needed(s, w);
			if (end > w->off)
				todo[n++] = (struct range){w->off, end};
		}
	}
	pthread_mutex_unlock(&s->lock);
	for (int i = 0; i < n; i++) {
		/* Pinned while it reserves: with a budget of a few blocks the
		 * reservation of a reader's second block would otherwise evict
		 * its first, and a reader marked held without its blocks pins
		 * the rest for good (two such readers stalled a 2 MiB budget). */
		struct pin pin = {.a = todo[i].start, .b = todo[i].end};
		bool ok = hold_for_reader(s, &pin);
		pthread_mutex_lock(&s->lock);
		pin_del(s, &pin);
		ok = ok && range_held(s, todo[i].start, todo[i].end);
		for (struct stream_waiter *w = s->waiters.next; ok && w != &s->waiters; w = w->next)
			if (w->off == todo[i].start && room_needed(s, w) == todo[i].end)
				w->held = true;
		pthread_mutex_unlock(&s->lock);
		if (!ok)
			break; /* no room: paused again */
		stream_want(s, todo[i].start, todo[i].end - todo[i].start);
	}
}

void admit_waiters(struct stream *s)
{
	admit(s, false);
}

/*
 * admit_waiters() for the readers whose missing bytes were lost: below
 * the frontier (evicted), anywhere once the stream is complete, and
 * anywhere with fill=ondemand (fetch distance 0: no fill brings them), and
 * anywhere while the budget pauses the stream (the fill may never reach
 * them: they need a fetch of their own). Otherwise, past the frontier of a
 * running stream a reader's bytes are on their way (the fill or its range
 * fetch) or the source fails, and its range fetch keeps
 * the retry limit it had; the evictions that take such bytes ask again
 * themselves (reask).
 */
void admit_lost(struct stream *s)
{
	admit(s, true);
}
