/*
 * stream.c - the async buffer: see include/streamfs/stream.h for the
 * contract, and stream_int.h for the files that share the work. This one
 * holds the state machine, the waiters, reading, attributes and status.
 *
 * Invariants (all under s->lock):
 *  - present holds exactly the byte ranges that were written to the store
 *    and may be served; present bytes never change (stream_write.c). They
 *    leave it only by eviction or a keep= drop (stream_cache.c).
 *  - frontier only grows: it is extended through present bytes, so every
 *    byte below it was here once (maybe evicted since).
 *  - A parked waiter is on s->waiters with wstate W_PARKED and cannot be
 *    answered now; it is re-checked whenever a write covers w->need (the
 *    first byte it misses), or the state or announced length changes.
 *  - A waiter found answerable is unlinked and marked W_CLAIMED under the
 *    lock, and its done() is called after the lock is dropped. Because the
 *    check and the parking happen under the same lock as every fill, no
 *    wake-up can fall between "check" and "wait" (the reference's bug).
 *  - Terminal states (complete, failed, cancelled) never change again
 *    (but for the exceptions stream.h lists for evicted bytes).
 *
 * No I/O and no callback runs under the stream lock.
 */
#include "stream_int.h"

#include "log.h"
#include "streamfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
bool accepts_writes(const struct stream *s)
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
	 * until it is unlinked. Its blocks count against the budget until
	 * the store is closed (below): given back earlier, a paused stream
	 * resumed and wrote while these were still on the disk. */
	uint64_t blocks = 0;
	struct cache *ca = s->cache ? cache_unlink(&s->cc, &blocks) : NULL;
	free(s->blk);
	rangeset_free(&s->seen);
	rangeset_free(&s->sent);
	if (s->ops->destroy)
		s->ops->destroy(s->src);
	store_close(s->store);
	cache_give_back(ca, blocks);
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

/* ---- waiters ---------------------------------------------------------- */

void stream_waiter_init(struct stream_waiter *w)
{
	w->next = w->prev = NULL;
	w->need = 0;
	w->result = 0;
	w->wstate = W_NEW;
	w->held = false;
}

void unlink_waiter(struct stream *s, struct stream_waiter *w)
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
void collect(struct stream *s, struct stream_waiter *ready, bool all, uint64_t a, uint64_t b)
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
void finish_ready(struct stream_waiter *ready)
{
	struct stream_waiter *w = ready->next;
	while (w) {
		struct stream_waiter *next = w->next;
		w->next = NULL;
		w->done(w, w->result); /* may free w */
		w = next;
	}
}

ssize_t stream_wait(struct stream *s, struct stream_waiter *w)
{
	bool kick = false, wake_fill = false;
	uint64_t off = w->off;
	struct range ask[8];
	int nask = 0;
	/* A reader of evictable bytes reserves its blocks before it parks:
	 * what it pins then can always be filled (see blk_pinned). */
	pthread_mutex_lock(&s->lock);
	uint64_t room = room_needed(s, w);
	unsigned seen = s->resumes;
	pthread_mutex_unlock(&s->lock);
	/* Pinned until it is on the list (or answered): a held reader pins
	 * its blocks only from there, and what it reserved must still be
	 * there then (see admit() in stream_cache.c). */
	struct pin pin = {.a = off, .b = room};
	bool got = room > off && hold_for_reader(s, &pin);
	bool admit = false;
	pthread_mutex_lock(&s->lock);
	if (room > off) {
		pin_del(s, &pin);
		w->held = got && range_held(s, off, room);
	}
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
		 * for; a paused source retries, now that a reader waits. The
		 * ask is recorded in the same critical section as the park: a
		 * fetch failure after it then finds both, the waiter to fail
		 * and the want to forget. (Asked after unlocking, a failure in
		 * between left a stale want that no transfer would ever fill.) */
		if (w->kind != STREAM_WAIT_END && w->kind != STREAM_WAIT_SIZE &&
		    (w->need < s->frontier || s->state == STREAM_COMPLETE))
			nask = want_locked(s, w->off, w->len, ask);
		kick = s->paused != CACHE_RUN;
		if (s->fill_held && waits_for_fill(s, w)) {
			s->fill_held = false;
			wake_fill = true;
		}
		/* A resume between our failed reservation and now ran
		 * admit_waiters() before we were on the list: admit again, or
		 * nothing would ever reserve our blocks. */
		admit = !w->held && s->resumes != seen;
	}
	pthread_mutex_unlock(&s->lock);
	if (admit)
		admit_waiters(s);
	/* @w may be answered and freed by now. */
	fetch_asked(s, ask, nask);
	if (kick && s->ops->resume)
		s->ops->resume(s, s->src);
	if (wake_fill && s->ops->fill_wanted)
		s->ops->fill_wanted(s, s->src);
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
void set_failed(struct stream *s, enum stream_state st, int err, const char *msg,
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

/* ---- reading ---------------------------------------------------------- */

/* Scattered small reads could make the set grow without end: past this
 * many ranges, further ones are not noted (they are only not pushed). */
#define SENT_MAX_RANGES 4096

/* Under s->lock: note [off, off+len) as sent (@sent > 0), or un-note it
 * (@sent < 0); both best effort. */
static void mark_sent(struct stream *s, uint64_t off, uint64_t len, int sent)
{
	if (!len || !sent)
		return;
	if (sent < 0) {
		if (s->sent.n)
			(void)rangeset_remove(&s->sent, off, off + len);
		return;
	}
	/* A range that starts inside or right after a noted one adds none. */
	bool grows =
	    off ? rangeset_run_end(&s->sent, off - 1) < off : rangeset_run_end(&s->sent, 0) == 0;
	if (!s->keep && (s->sent.n < SENT_MAX_RANGES || !grows))
		(void)rangeset_add(&s->sent, off, off + len);
}

/* @sent: see mark_sent(); done in the critical section the copy takes
 * anyway, so that a reply costs the stream lock once. */
static int copy_out(struct stream *s, void *buf, size_t len, uint64_t off, bool is_read, int sent)
{
	struct pin pin = {.a = off, .b = off + len};
	bool first = false;
	pthread_mutex_lock(&s->lock);
	bool ok = rangeset_contains(&s->present, off, off + len);
	if (ok)
		mark_sent(s, off, len, sent);
	/* Only evictions and keep= drops remove present bytes: a stream that
	 * has neither (commands, pipes, no-Range URLs) is copied without a
	 * pin, its blocks' read ticks matter to nobody, and the read path
	 * takes the stream lock once. */
	bool pinned = ok && len && s->cache && (s->evictable || s->keep);
	if (pinned) {
		/* Evictions and drops keep off these bytes while we copy. */
		pin_add(s, &pin);
		if (is_read)
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

int stream_copy(struct stream *s, void *buf, size_t len, uint64_t off)
{
	return copy_out(s, buf, len, off, true, 0);
}

int stream_copy_reply(struct stream *s, void *buf, size_t len, uint64_t off, bool cached)
{
	return copy_out(s, buf, len, off, true, cached ? -1 : 1);
}

int stream_peek(struct stream *s, void *buf, size_t len, uint64_t off)
{
	return copy_out(s, buf, len, off, false, 0);
}

bool stream_take_sent(struct stream *s, uint64_t below, uint64_t *off, uint64_t *len)
{
	bool got = false;
	pthread_mutex_lock(&s->lock);
	if (s->sent.n && s->sent.r[0].start < below) {
		struct range r = s->sent.r[0];
		if (r.end > below)
			r.end = below;
		if (rangeset_remove(&s->sent, r.start, r.end) == 0) {
			*off = r.start;
			*len = r.end - r.start;
			got = true;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return got;
}

bool stream_take_sent_last(struct stream *s, uint64_t chunk, uint64_t *off, uint64_t *len)
{
	bool got = false;
	pthread_mutex_lock(&s->lock);
	if (s->sent.n && chunk) {
		struct range r = s->sent.r[s->sent.n - 1];
		uint64_t from = (r.end - 1) / chunk * chunk;
		if (from < r.start)
			from = r.start;
		if (rangeset_remove(&s->sent, from, r.end) == 0) {
			*off = from;
			*len = r.end - from;
			got = true;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return got;
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

/* (Re)arm @sw's waiter for a read of [off, off+len). */
static void sync_arm(struct sync_wait *sw, bool partial, uint64_t off, size_t len)
{
	stream_waiter_init(&sw->w);
	sw->w.kind = partial ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE;
	sw->w.off = off;
	sw->w.len = len;
	sw->w.done = sync_done;
	sw->w.data = sw;
}

ssize_t stream_read(struct stream *s, void *buf, size_t len, uint64_t off, bool partial)
{
	struct sync_wait sw;
	sync_arm(&sw, partial, off, len);
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
		sync_arm(&sw, partial, off, len);
	}
	pthread_mutex_destroy(&sw.m);
	pthread_cond_destroy(&sw.c);
	return r;
}

/* ---- attributes and status -------------------------------------------- */

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
