/*
 * stream.c - the async buffer: see include/streamfs/stream.h for the
 * contract.
 *
 * Invariants (all under s->lock):
 *  - present holds exactly the byte ranges that were written to the store
 *    and may be served; present bytes never change. They leave it only
 *    by eviction or a keep= drop, whole blocks at a time, never while a
 *    parked waiter or a copy in progress (a pin) covers them.
 *  - frontier only grows: it is extended through present bytes, so every
 *    byte below it was here once (maybe evicted since).
 *  - With a cache, every block holding a present byte is held (reserved
 *    in the budget and allocated in the store).
 *  - A parked waiter is on s->waiters with wstate W_PARKED and cannot be
 *    answered now; it is re-checked whenever a write covers w->need (the
 *    first byte it misses), or the state or announced length changes.
 *  - A waiter found answerable is unlinked and marked W_CLAIMED under the
 *    lock, and its done() is called after the lock is dropped. Because the
 *    check and the parking happen under the same lock as every fill, no
 *    wake-up can fall between "check" and "wait" (the reference's bug).
 *  - Terminal states (complete, failed, cancelled) never change again.
 *  - store_limit only goes down: the store refused a byte there (EFBIG,
 *    its file system's maximum file size or RLIMIT_FSIZE), so no byte at
 *    or past it can ever be present.
 *
 * No I/O and no callback runs under the stream lock, except the hole
 * punch of an eviction or drop: it must happen before any writer can
 * reserve that block again.
 */
#include "streamfs/stream.h"

#include "log.h"
#include "streamfs/cache.h"
#include "rangeset.h"
#include "streamfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { W_NEW, W_PARKED, W_CLAIMED, W_CANCELLED };

struct attr {
	struct attr *next;
	char *key, *value;
};

/* Bytes a copy or a write is working on: not to be evicted or dropped. */
struct pin {
	uint64_t a, b;
	struct pin *next;
};

#define BLK ((uint64_t)CACHE_BLOCK)
#define BLK_READ 1u /* in blk[]: read since written; the rest is the tick << 1 */

struct stream {
	atomic_int refs;
	char *name;
	struct store *store;
	const struct stream_source_ops *ops;
	void *src;

	pthread_mutex_t lock;
	/* protected by lock */
	enum stream_state state;
	bool started;       /* start() returned 0: the source may hold something */
	bool cancel_wanted; /* stream_cancel() was called */
	bool cancel_sent;   /* the source's cancel() was called */
	struct rangeset present;
	struct rangeset wanted; /* asked of the source's fetch(), maybe not here yet */
	uint64_t fetch_distance;
	uint64_t frontier;
	uint64_t seq_pos; /* where stream_append/stream_fill_fd write next */
	int64_t length;   /* exact when complete, announced, or -1 */
	uint64_t store_limit; /* the store cannot hold bytes from here on */
	uint64_t error_offset;
	int error;
	char error_msg[256];
	struct stream_waiter waiters; /* list head; waiters.next == &waiters when empty */
	unsigned nwaiters;
	struct attr *attrs;
	uint64_t start_ms, end_ms;

	/* the store budget (cache NULL: none) */
	struct cache *cache;
	struct cache_client cc;
	/* protected by lock */
	uint64_t *blk; /* per block from blk_base: 0 not held, else tick << 1 | BLK_READ */
	uint64_t blk_base, blk_n;
	uint64_t held_blocks;
	struct pin *pins;
	bool evictable;
	enum cache_pause paused;
	unsigned resumes; /* counts cc_resume(): a pause older than one is stale */
	bool unpinned;    /* a reader holding reserved blocks was answered */
	uint64_t keep, drop_to; /* keep: bytes below drop_to are gone */
	uint64_t top;           /* the highest byte ever written, +1 */
	struct rangeset seen;   /* every byte ever present */
	uint64_t evicted, dropped;
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *stream_state_name(enum stream_state st)
{
	switch (st) {
	case STREAM_IDLE:
		return "idle";
	case STREAM_RUNNING:
		return "running";
	case STREAM_COMPLETE:
		return "complete";
	case STREAM_FAILED:
		return "failed";
	case STREAM_CANCELLED:
		return "cancelled";
	}
	return "unknown";
}

static bool terminal(enum stream_state st)
{
	return st == STREAM_COMPLETE || st == STREAM_FAILED || st == STREAM_CANCELLED;
}

/* A complete stream missing evicted bytes (its source may be fetching
 * them again). Under the lock. */
static bool complete_with_holes(const struct stream *s)
{
	return s->state == STREAM_COMPLETE && s->present.total < (uint64_t)s->length;
}

/* Writes are taken while running, and for a complete stream whose evicted
 * bytes come back (bytes already present are skipped). Under the lock. */
static bool accepts_writes(const struct stream *s)
{
	return s->state == STREAM_RUNNING || (s->state == STREAM_COMPLETE && s->evictable);
}

struct stream *stream_new(const char *name, struct store *store,
			  const struct stream_source_ops *ops, void *src)
{
	struct stream *s = calloc(1, sizeof(*s));
	if (!s || !(s->name = strdup(name))) {
		free(s);
		store_close(store);
		if (ops->destroy)
			ops->destroy(src);
		errno = ENOMEM;
		return NULL;
	}
	atomic_init(&s->refs, 1);
	s->store = store;
	s->ops = ops;
	s->src = src;
	pthread_mutex_init(&s->lock, NULL);
	s->state = STREAM_IDLE;
	s->length = -1;
	s->store_limit = UINT64_MAX;
	s->waiters.next = s->waiters.prev = &s->waiters;
	return s;
}

struct stream *stream_ref(struct stream *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void stream_unref(struct stream *s)
{
	if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	/* First: the cache may be looking at this stream (under its lock)
	 * until it is detached. */
	if (s->cache)
		cache_detach(&s->cc);
	free(s->blk);
	rangeset_free(&s->seen);
	if (s->ops->destroy)
		s->ops->destroy(s->src);
	store_close(s->store);
	rangeset_free(&s->present);
	rangeset_free(&s->wanted);
	for (struct attr *a = s->attrs, *n; a; a = n) {
		n = a->next;
		free(a->key);
		free(a->value);
		free(a);
	}
	pthread_mutex_destroy(&s->lock);
	free(s->name);
	free(s);
}

const char *stream_name(const struct stream *s)
{
	return s->name;
}

const char *stream_kind(const struct stream *s)
{
	return s->ops->kind;
}

bool stream_can_fetch(const struct stream *s)
{
	return s->ops->fetch != NULL;
}

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
	if (first <= s->blk_base || first - s->blk_base < s->blk_n / 2)
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
static bool blk_touch(struct stream *s, uint64_t a, uint64_t b, bool read)
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

static void pin_add(struct stream *s, struct pin *p)
{
	p->next = s->pins;
	s->pins = p;
}

static void pin_del(struct stream *s, struct pin *p)
{
	for (struct pin **q = &s->pins; *q; q = &(*q)->next) {
		if (*q == p) {
			*q = p->next;
			return;
		}
	}
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
		log_warn("%s: cannot punch a hole at byte %llu: %s", s->name,
			 (unsigned long long)a, strerror(-r));
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

static void admit_waiters(struct stream *s);

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

static bool cc_evict(struct cache_client *c, uint64_t b, uint64_t tick)
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
		}
	}
	pthread_mutex_unlock(&s->lock);
	return done;
}

void stream_set_cache(struct stream *s, struct cache *ca)
{
	s->cache = ca;
	s->cc.get = cc_get;
	s->cc.put = cc_put;
	s->cc.resume = cc_resume;
	s->cc.candidates = cc_candidates;
	s->cc.evict = cc_evict;
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

static unsigned resume_count(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	unsigned n = s->resumes;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Show the pause, unless a resume came since @seen (then it is over). */
static void set_paused(struct stream *s, enum cache_pause why, unsigned seen)
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
static int64_t hold_range(struct stream *s, uint64_t off, uint64_t end, unsigned flags)
{
	if (!s->cache || end <= off)
		return (int64_t)end;
	for (uint64_t b = off / BLK; b <= (end - 1) / BLK; b++) {
		pthread_mutex_lock(&s->lock);
		bool held = blk_held(s, b);
		unsigned f = flags;
		if ((f & CACHE_AHEAD) && blk_wanted_by_reader(s, b))
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

/* The stream ended: blocks reserved past its last byte (a fill reserves
 * before it reads, and may read the end of file) are given back. */
static void release_past_end(struct stream *s)
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
static void drop_old(struct stream *s)
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

/* ---- waiters ---------------------------------------------------------- */

void stream_waiter_init(struct stream_waiter *w)
{
	w->next = w->prev = NULL;
	w->need = 0;
	w->result = 0;
	w->wstate = W_NEW;
	w->held = false;
}

static void unlink_waiter(struct stream *s, struct stream_waiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = NULL;
	s->nwaiters--;
}

/* The error a read at or past the failure point gets. */
static ssize_t stop_error(const struct stream *s)
{
	return s->state == STREAM_CANCELLED ? -ECANCELED : -EIO;
}

/*
 * Can @w be answered now? Returns its result, or STREAM_PARKED with w->need
 * set to the first byte it misses. Called with s->lock held.
 */
static ssize_t evaluate(struct stream *s, struct stream_waiter *w)
{
	if (w->kind == STREAM_WAIT_END) {
		if (!terminal(s->state))
			return STREAM_PARKED;
		return s->state == STREAM_COMPLETE ? 0 : stop_error(s);
	}
	if (w->kind == STREAM_WAIT_SIZE) {
		if (s->frontier > 0 || s->state == STREAM_COMPLETE)
			return 0;
		if (terminal(s->state))
			return stop_error(s);
		if (s->length >= 0)
			return 0;
		w->need = 0;
		return STREAM_PARKED;
	}

	uint64_t off = w->off;
	uint64_t want = w->kind == STREAM_WAIT_ANY ? 1 : w->len;
	if (w->len == 0)
		return 0;
	if (off < s->drop_to)
		return -ENODATA; /* keep= dropped it: never data, never a fake end */
	uint64_t run = rangeset_run_end(&s->present, off);
	uint64_t avail = run - off; /* present bytes at off */
	size_t cap = w->len;
	if (avail >= want)
		return (ssize_t)(avail < cap ? avail : cap);

	switch (s->state) {
	case STREAM_COMPLETE:
		/* Every byte below length was here; if the run stops short of
		 * the end (or of the read), bytes were evicted: wait while the
		 * source fetches them again. */
		if (off >= (uint64_t)s->length || run >= (uint64_t)s->length)
			return (ssize_t)avail;
		if (!s->evictable)
			return avail ? (ssize_t)avail : -EIO;
		w->need = run;
		return STREAM_PARKED;
	case STREAM_FAILED:
	case STREAM_CANCELLED:
		/* A short count up to the failure point, then the error there.
		 * Past it, bytes fetched ahead serve only reads they cover
		 * whole (above): a short count there would read as the end. */
		if (off >= s->error_offset)
			return stop_error(s);
		return avail > 0 ? (ssize_t)avail : stop_error(s);
	case STREAM_IDLE:
	case STREAM_RUNNING:
		if (s->length >= 0) {
			uint64_t len = (uint64_t)s->length;
			if (off >= len)
				return 0;
			if (run >= len) /* the range crosses the announced end */
				return (ssize_t)(len - off);
		}
		/* The missing byte can never be stored: like a failure point,
		 * but for this read only (the stream goes on below it). */
		if (run >= s->store_limit)
			return avail > 0 ? (ssize_t)avail : -EFBIG;
		w->need = run;
		return STREAM_PARKED;
	}
	return -EIO;
}

/*
 * Move the waiters that are answerable now from s->waiters to @ready.
 * With @all, every waiter is re-checked (state or length changed);
 * otherwise only those missing a byte in [a, b).
 */
static void collect(struct stream *s, struct stream_waiter *ready, bool all, uint64_t a,
		    uint64_t b)
{
	struct stream_waiter *w = s->waiters.next;
	while (w != &s->waiters) {
		struct stream_waiter *next = w->next;
		if (all || (w->kind != STREAM_WAIT_END && w->need >= a && w->need < b)) {
			ssize_t r = evaluate(s, w);
			if (r != STREAM_PARKED) {
				s->unpinned |= w->held;
				unlink_waiter(s, w);
				w->wstate = W_CLAIMED;
				w->result = r;
				w->next = ready->next;
				ready->next = w;
			}
		}
		w = next;
	}
}

/* Call done() on what collect() gathered. No lock held. */
static void finish_ready(struct stream_waiter *ready)
{
	struct stream_waiter *w = ready->next;
	while (w) {
		struct stream_waiter *next = w->next;
		w->next = NULL;
		w->done(w, w->result); /* may free w */
		w = next;
	}
}

/*
 * The end of the range a reader of [off, off+len) may need room for, or
 * @off if it needs none (not evictable, all present, past the end).
 * Under the lock.
 */
static uint64_t room_needed(struct stream *s, const struct stream_waiter *w)
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
 * bytes may have been evicted meanwhile. After a resume.
 */
static void admit_waiters(struct stream *s)
{
	struct range todo[16];
	int n = 0;
	pthread_mutex_lock(&s->lock);
	for (struct stream_waiter *w = s->waiters.next; w != &s->waiters && n < 16; w = w->next) {
		uint64_t end = w->held ? w->off : room_needed(s, w);
		if (end > w->off)
			todo[n++] = (struct range){w->off, end};
	}
	pthread_mutex_unlock(&s->lock);
	for (int i = 0; i < n; i++) {
		int64_t got = hold_range(s, todo[i].start, todo[i].end, 0);
		if (got < (int64_t)todo[i].end)
			break; /* no room: paused again */
		pthread_mutex_lock(&s->lock);
		for (struct stream_waiter *w = s->waiters.next; w != &s->waiters; w = w->next)
			if (!w->held && w->off == todo[i].start && room_needed(s, w) == todo[i].end)
				w->held = true;
		pthread_mutex_unlock(&s->lock);
		stream_want(s, todo[i].start, todo[i].end - todo[i].start);
	}
}

ssize_t stream_wait(struct stream *s, struct stream_waiter *w)
{
	bool fetch = false, kick = false;
	uint64_t off = w->off, len = w->len;
	/* A reader of evictable bytes reserves its blocks before it parks:
	 * what it pins then can always be filled (see blk_pinned). */
	pthread_mutex_lock(&s->lock);
	uint64_t room = room_needed(s, w);
	pthread_mutex_unlock(&s->lock);
	if (room > off) {
		int64_t got = hold_range(s, off, room, 0);
		w->held = got >= (int64_t)room;
	}
	pthread_mutex_lock(&s->lock);
	if (w->wstate == W_CANCELLED) {
		pthread_mutex_unlock(&s->lock);
		return -EINTR;
	}
	ssize_t r = evaluate(s, w);
	if (r == STREAM_PARKED) {
		w->wstate = W_PARKED;
		w->prev = s->waiters.prev;
		w->next = &s->waiters;
		s->waiters.prev->next = w;
		s->waiters.prev = w;
		s->nwaiters++;
		/* Evicted bytes (below the frontier) come back only if asked
		 * for; a paused source retries, now that a reader waits. */
		fetch = stream_can_fetch(s) && w->kind != STREAM_WAIT_END &&
			w->kind != STREAM_WAIT_SIZE &&
			(w->need < s->frontier || s->state == STREAM_COMPLETE);
		kick = s->paused != CACHE_RUN;
	}
	pthread_mutex_unlock(&s->lock);
	/* @w may be answered and freed by now: use the copies. */
	if (fetch)
		stream_want(s, off, len);
	if (kick && s->ops->resume)
		s->ops->resume(s, s->src);
	return r;
}

bool stream_unwait(struct stream *s, struct stream_waiter *w)
{
	bool mine = false;
	pthread_mutex_lock(&s->lock);
	if (w->wstate == W_PARKED) {
		unlink_waiter(s, w);
		w->wstate = W_NEW;
		mine = true;
	} else if (w->wstate == W_NEW) {
		w->wstate = W_CANCELLED;
	}
	pthread_mutex_unlock(&s->lock);
	return mine;
}

/* ---- state changes ---------------------------------------------------- */

/* Become terminal with an error. Called with s->lock held and the state
 * not terminal; fills @ready with the waiters to answer. */
static void set_failed(struct stream *s, enum stream_state st, int err, const char *msg,
		       struct stream_waiter *ready)
{
	s->state = st;
	s->error = err;
	s->error_offset = s->frontier;
	snprintf(s->error_msg, sizeof(s->error_msg), "%s", msg ? msg : strerror(err));
	s->end_ms = now_ms();
	collect(s, ready, true, 0, 0);
}

int stream_start(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	if (s->state != STREAM_IDLE) {
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
	s->state = STREAM_RUNNING;
	s->start_ms = now_ms();
	pthread_mutex_unlock(&s->lock);

	/* The store is created only now: idle streams hold no descriptor. */
	int r = store_create(s->store);
	if (r < 0) {
		stream_fail(s, -r, "cannot create the store in %s: %s", store_where(s->store),
			    strerror(-r));
		return r;
	}
	log_debug("%s: starting %s source", s->name, s->ops->kind);
	r = s->ops->start(s, s->src);

	pthread_mutex_lock(&s->lock);
	s->started = r == 0;
	bool late_cancel = s->started && s->cancel_wanted && !s->cancel_sent;
	if (late_cancel)
		s->cancel_sent = true;
	pthread_mutex_unlock(&s->lock);
	if (late_cancel && s->ops->cancel)
		s->ops->cancel(s, s->src);
	if (r < 0)
		stream_fail(s, -r, "cannot start: %s", strerror(-r));
	return r;
}


void stream_cancel(struct stream *s, const char *msg)
{
	struct stream_waiter ready = {.next = NULL};
	pthread_mutex_lock(&s->lock);
	bool was_evictable = s->state == STREAM_COMPLETE && s->evictable;
	if (was_evictable) {
		/* Its source may be fetching evicted bytes again (it is told
		 * below). Missing bytes can no longer come back, and what is
		 * here stays for the open handles. */
		s->evictable = false;
		if (complete_with_holes(s))
			set_failed(s, STREAM_CANCELLED, ECANCELED, msg ? msg : "cancelled", &ready);
	} else if (!terminal(s->state)) {
		set_failed(s, STREAM_CANCELLED, ECANCELED, msg ? msg : "cancelled", &ready);
	}
	/* The source hears of it even when the stream has ended: it may still
	 * hold something (a finished command's background jobs). One that is
	 * still in start() hears of it when start() returns. */
	s->cancel_wanted = true;
	bool call = s->started && !s->cancel_sent;
	if (call)
		s->cancel_sent = true;
	pthread_mutex_unlock(&s->lock);
	if (was_evictable && s->cache)
		cache_set_evictable(&s->cc, false);
	if (call && s->ops->cancel)
		s->ops->cancel(s, s->src);
	finish_ready(&ready);
	release_past_end(s);
}

void stream_fail(struct stream *s, int err, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	struct stream_waiter ready = {.next = NULL};
	pthread_mutex_lock(&s->lock);
	/* A complete stream fails only if evicted bytes cannot come back. */
	if (terminal(s->state) && !complete_with_holes(s)) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	set_failed(s, STREAM_FAILED, err > 0 ? err : EIO, msg, &ready);
	uint64_t at = s->error_offset;
	pthread_mutex_unlock(&s->lock);
	log_error("%s: failed at byte %llu: %s", s->name, (unsigned long long)at, msg);
	finish_ready(&ready);
	release_past_end(s);
}

void stream_end(struct stream *s)
{
	struct stream_waiter ready = {.next = NULL};
	char msg[128];
	pthread_mutex_lock(&s->lock);
	if (terminal(s->state)) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	/* Bytes written ahead (past a hole) prove the stream is at least that
	 * long, like an announced length: ending short of them is truncation,
	 * not an end (else a read there would answer data, then 0). */
	uint64_t need = s->top;
	if (s->length >= 0 && (uint64_t)s->length > need)
		need = (uint64_t)s->length;
	if (s->frontier < need) {
		snprintf(msg, sizeof(msg), "truncated: the source ended after %llu of %llu bytes",
			 (unsigned long long)s->frontier, (unsigned long long)need);
		uint64_t at = s->frontier;
		set_failed(s, STREAM_FAILED, EIO, msg, &ready);
		pthread_mutex_unlock(&s->lock);
		log_error("%s: failed at byte %llu: %s", s->name, (unsigned long long)at, msg);
		finish_ready(&ready);
		return;
	}
	s->state = STREAM_COMPLETE;
	s->length = (int64_t)s->frontier;
	s->end_ms = now_ms();
	collect(s, &ready, true, 0, 0);
	uint64_t n = s->frontier, ms = s->end_ms - s->start_ms;
	pthread_mutex_unlock(&s->lock);
	log_info("%s: complete, %llu bytes in %llu.%03llu s", s->name, (unsigned long long)n,
		 (unsigned long long)(ms / 1000), (unsigned long long)(ms % 1000));
	finish_ready(&ready);
	release_past_end(s);
}

int stream_set_length(struct stream *s, uint64_t len)
{
	struct stream_waiter ready = {.next = NULL};
	int r = 0;
	pthread_mutex_lock(&s->lock);
	uint64_t top = s->top;
	if (terminal(s->state))
		r = s->state == STREAM_COMPLETE && (uint64_t)s->length != len ? -EINVAL : 0;
	else if (len < top || (s->length >= 0 && (uint64_t)s->length != len))
		r = -EINVAL;
	else if (s->length < 0) {
		s->length = (int64_t)len;
		collect(s, &ready, true, 0, 0);
	}
	pthread_mutex_unlock(&s->lock);
	finish_ready(&ready);
	return r;
}

/* ---- producing -------------------------------------------------------- */

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
	if (end > off) {
		r = rangeset_add(&s->present, off, end);
		if (r == 0) {
			rangeset_add(&s->seen, off, end); /* only for status */
			if (end > s->top)
				s->top = end;
			s->frontier = rangeset_run_end(&s->present, s->frontier);
			blk_touch(s, off, end, false);
			collect(s, &ready, false, off, end);
		}
	}
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

static void unpin(struct stream *s, struct pin *p)
{
	pthread_mutex_lock(&s->lock);
	pin_del(s, p);
	pthread_mutex_unlock(&s->lock);
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
 * Reserve the blocks of [off, off+len) (all or nothing happens: -ENOBUFS
 * writes nothing), then store the parts of it that are not present yet and
 * mark the whole range present in one step: a byte a reader may have seen
 * is never rewritten (a reader may be copying it out at that moment), and
 * readers see the write all at once. Pinned meanwhile, so no eviction
 * punches a block between its reservation and the write.
 */
static int write_missing(struct stream *s, uint64_t off, const void *buf, size_t len, bool seq,
			 unsigned flags)
{
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
	if (held < 0 || (uint64_t)held < end) {
		unpin(s, &pin);
		if (held >= 0)
			return -ENOBUFS;
		if (held != -ENOBUFS)
			store_failed(s, (int)-held);
		return (int)held;
	}
	while (a < end) {
		pthread_mutex_lock(&s->lock);
		ok = accepts_writes(s);
		uint64_t limit = s->store_limit;
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
	return mark_present(s, off, len, seq, &pin);
}

int stream_write(struct stream *s, uint64_t off, const void *buf, size_t len)
{
	return write_missing(s, off, buf, len, false, 0);
}

int stream_write_flags(struct stream *s, uint64_t off, const void *buf, size_t len,
		       unsigned flags)
{
	return write_missing(s, off, buf, len, false, flags & STREAM_AHEAD ? CACHE_AHEAD : 0);
}

int stream_append(struct stream *s, const void *buf, size_t len)
{
	uint64_t pos;
	if (!running(s, &pos))
		return -ECANCELED;
	return write_missing(s, pos, buf, len, true, 0);
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

int stream_set_attr(struct stream *s, const char *key, const char *fmt, ...)
{
	char *v;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&v, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;

	pthread_mutex_lock(&s->lock);
	struct attr *a;
	for (a = s->attrs; a; a = a->next)
		if (strcmp(a->key, key) == 0)
			break;
	if (a) {
		free(a->value);
		a->value = v;
		v = NULL;
	} else {
		a = calloc(1, sizeof(*a));
		if (a && (a->key = strdup(key))) {
			a->value = v;
			v = NULL;
			a->next = s->attrs;
			s->attrs = a;
		} else {
			free(a);
			a = NULL;
		}
	}
	pthread_mutex_unlock(&s->lock);
	free(v);
	return a ? 0 : -ENOMEM;
}

/* ---- reading ---------------------------------------------------------- */

int stream_copy(struct stream *s, void *buf, size_t len, uint64_t off)
{
	struct pin pin = {.a = off, .b = off + len};
	bool first = false;
	pthread_mutex_lock(&s->lock);
	bool ok = rangeset_contains(&s->present, off, off + len);
	bool pinned = ok && len && s->cache;
	if (pinned) {
		/* Evictions and drops keep off these bytes while we copy. */
		pin_add(s, &pin);
		first = blk_touch(s, off, off + len, true);
	}
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return -ERANGE;
	int r = len ? store_pread(s->store, buf, len, off) : 0;
	if (pinned)
		unpin(s, &pin);
	if (first)
		cache_note_read(s->cache);
	return r;
}

struct sync_wait {
	struct stream_waiter w;
	pthread_mutex_t m;
	pthread_cond_t c;
	bool done;
};

static void sync_done(struct stream_waiter *w, ssize_t result)
{
	struct sync_wait *sw = w->data;
	pthread_mutex_lock(&sw->m);
	sw->done = true;
	pthread_cond_signal(&sw->c);
	pthread_mutex_unlock(&sw->m);
}

ssize_t stream_read(struct stream *s, void *buf, size_t len, uint64_t off, bool partial)
{
	struct sync_wait sw;
	stream_waiter_init(&sw.w);
	sw.w.kind = partial ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE;
	sw.w.off = off;
	sw.w.len = len;
	sw.w.done = sync_done;
	sw.w.data = &sw;
	sw.done = false;
	pthread_mutex_init(&sw.m, NULL);
	pthread_cond_init(&sw.c, NULL);

	ssize_t r;
	for (;;) {
		r = stream_wait(s, &sw.w);
		if (r == STREAM_PARKED) {
			pthread_mutex_lock(&sw.m);
			while (!sw.done)
				pthread_cond_wait(&sw.c, &sw.m);
			sw.done = false;
			pthread_mutex_unlock(&sw.m);
			r = sw.w.result;
		}
		if (r <= 0)
			break;
		int n = stream_copy(s, buf, (size_t)r, off);
		if (n != -ERANGE) {
			r = n < 0 ? n : r;
			break;
		}
		/* Evicted between the answer and the copy: wait again. */
		stream_waiter_init(&sw.w);
		sw.w.kind = partial ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE;
		sw.w.off = off;
		sw.w.len = len;
		sw.w.done = sync_done;
		sw.w.data = &sw;
	}
	pthread_mutex_destroy(&sw.m);
	pthread_cond_destroy(&sw.c);
	return r;
}

/* ---- random access ---------------------------------------------------- */

void stream_want(struct stream *s, uint64_t off, uint64_t len)
{
	if (!stream_can_fetch(s) || len == 0)
		return;
	struct range ask[8]; /* gaps to fetch; more are asked on the next read */
	int nask = 0;
	if (s->cache && len > cache_window_max(s->cache))
		len = cache_window_max(s->cache);
	uint64_t end = off + len;
	pthread_mutex_lock(&s->lock);
	if (s->state != STREAM_RUNNING && !(s->state == STREAM_COMPLETE && s->evictable)) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
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
		/* Near the frontier the sequential fill is faster than a fetch;
		 * below it, a missing byte was evicted: only a fetch brings it. */
		bool far = a < s->frontier || a - s->frontier >= s->fetch_distance;
		if (far && rangeset_add(&s->wanted, a, b) == 0) {
			ask[nask].start = a;
			ask[nask].end = b;
			nask++;
		}
		a = b;
	}
	pthread_mutex_unlock(&s->lock);
	for (int i = 0; i < nask; i++)
		s->ops->fetch(s, s->src, ask[i].start, ask[i].end - ask[i].start);
}

void stream_set_fetch_distance(struct stream *s, uint64_t bytes)
{
	pthread_mutex_lock(&s->lock);
	s->fetch_distance = bytes;
	pthread_mutex_unlock(&s->lock);
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

uint64_t stream_frontier(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t f = s->frontier;
	pthread_mutex_unlock(&s->lock);
	return f;
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

/* ---- status ----------------------------------------------------------- */

void stream_get_info(struct stream *s, struct stream_info *out)
{
	pthread_mutex_lock(&s->lock);
	out->state = s->state;
	out->bytes = s->seen.total;
	out->held = s->present.total;
	out->store = s->held_blocks * BLK;
	out->evicted = s->evicted;
	out->dropped = s->dropped;
	out->keep = s->keep;
	out->paused = s->paused;
	out->frontier = s->frontier;
	out->length = s->length;
	out->error_offset = s->error_offset;
	out->error = s->error;
	memcpy(out->error_msg, s->error_msg, sizeof(out->error_msg));
	out->waiters = s->nwaiters;
	out->start_ms = s->start_ms;
	out->end_ms = s->end_ms;
	pthread_mutex_unlock(&s->lock);
}

ssize_t stream_get_attr(struct stream *s, const char *key, char *buf, size_t size)
{
	ssize_t r = -ENODATA;
	pthread_mutex_lock(&s->lock);
	for (struct attr *a = s->attrs; a; a = a->next) {
		if (strcmp(a->key, key) == 0) {
			r = (ssize_t)strlen(a->value);
			if (size)
				snprintf(buf, size, "%s", a->value);
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

int stream_list_attrs(struct stream *s, void (*fn)(const char *key, void *arg), void *arg)
{
	int n = 0;
	pthread_mutex_lock(&s->lock);
	for (struct attr *a = s->attrs; a; a = a->next, n++)
		fn(a->key, arg);
	pthread_mutex_unlock(&s->lock);
	return n;
}
