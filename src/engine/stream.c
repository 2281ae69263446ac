/*
 * stream.c - the async buffer: see include/streamfs/stream.h for the
 * contract.
 *
 * Invariants (all under s->lock):
 *  - present holds exactly the byte ranges that were written to the store
 *    and may be served; bytes never leave it and never change.
 *  - frontier == rangeset_run_end(&present, 0): every byte below it is here.
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
 * No I/O and no callback runs under the stream lock.
 */
#include "streamfs/stream.h"

#include "log.h"
#include "rangeset.h"
#include "streamfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
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

/* ---- waiters ---------------------------------------------------------- */

void stream_waiter_init(struct stream_waiter *w)
{
	w->next = w->prev = NULL;
	w->need = 0;
	w->result = 0;
	w->wstate = W_NEW;
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
	uint64_t run = rangeset_run_end(&s->present, off);
	uint64_t avail = run - off; /* present bytes at off */
	size_t cap = w->len;
	if (avail >= want)
		return (ssize_t)(avail < cap ? avail : cap);

	switch (s->state) {
	case STREAM_COMPLETE:
		/* Everything below length is present, so off is at/past the end
		 * or the run reaches it. */
		return (ssize_t)avail;
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

ssize_t stream_wait(struct stream *s, struct stream_waiter *w)
{
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
	}
	pthread_mutex_unlock(&s->lock);
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
	if (!terminal(s->state))
		set_failed(s, STREAM_CANCELLED, ECANCELED, msg ? msg : "cancelled", &ready);
	/* The source hears of it even when the stream has ended: it may still
	 * hold something (a finished command's background jobs). One that is
	 * still in start() hears of it when start() returns. */
	s->cancel_wanted = true;
	bool call = s->started && !s->cancel_sent;
	if (call)
		s->cancel_sent = true;
	pthread_mutex_unlock(&s->lock);
	if (call && s->ops->cancel)
		s->ops->cancel(s, s->src);
	finish_ready(&ready);
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
	if (terminal(s->state)) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	set_failed(s, STREAM_FAILED, err > 0 ? err : EIO, msg, &ready);
	uint64_t at = s->error_offset;
	pthread_mutex_unlock(&s->lock);
	log_error("%s: failed at byte %llu: %s", s->name, (unsigned long long)at, msg);
	finish_ready(&ready);
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
	uint64_t need = s->present.n ? s->present.r[s->present.n - 1].end : 0;
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
}

int stream_set_length(struct stream *s, uint64_t len)
{
	struct stream_waiter ready = {.next = NULL};
	int r = 0;
	pthread_mutex_lock(&s->lock);
	uint64_t top = s->present.n ? s->present.r[s->present.n - 1].end : 0;
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
static int mark_present(struct stream *s, uint64_t off, uint64_t n, bool seq)
{
	struct stream_waiter ready = {.next = NULL};
	int r = 0;
	bool too_long = false;
	char msg[128];

	pthread_mutex_lock(&s->lock);
	if (s->state != STREAM_RUNNING) {
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
	if (end > off) {
		r = rangeset_add(&s->present, off, end);
		if (r == 0) {
			s->frontier = rangeset_run_end(&s->present, 0);
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
	pthread_mutex_unlock(&s->lock);
	if (r < 0)
		log_error("%s: failed: %s", s->name, too_long ? msg : strerror(-r));
	finish_ready(&ready);
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
		int r = mark_present(s, off, lim - off, seq);
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

/*
 * Store the parts of [off, off+len) that are not present yet, then mark the
 * whole range present in one step: a byte a reader may have seen is never
 * rewritten (a reader may be copying it out at that moment), and readers
 * see the write all at once, as before.
 */
static int write_missing(struct stream *s, uint64_t off, const void *buf, size_t len, bool seq)
{
	const char *p = buf;
	uint64_t end = off + len, a = off;
	while (a < end) {
		pthread_mutex_lock(&s->lock);
		bool ok = s->state == STREAM_RUNNING;
		uint64_t limit = s->store_limit;
		a = rangeset_run_end(&s->present, a); /* skip what is present */
		uint64_t b = a < end ? rangeset_next_present(&s->present, a) : end;
		pthread_mutex_unlock(&s->lock);
		if (!ok)
			return -ECANCELED;
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
			if (k >= 0)
				return refused_from(s, off, a + (uint64_t)k, seq);
			r = (int)k;
		}
		if (r < 0) {
			store_failed(s, -r);
			return r;
		}
		a = b;
	}
	return mark_present(s, off, len, seq);
}

int stream_write(struct stream *s, uint64_t off, const void *buf, size_t len)
{
	return write_missing(s, off, buf, len, false);
}

int stream_append(struct stream *s, const void *buf, size_t len)
{
	uint64_t pos;
	if (!running(s, &pos))
		return -ECANCELED;
	return write_missing(s, pos, buf, len, true);
}

ssize_t stream_fill_fd(struct stream *s, int fd, size_t max)
{
	uint64_t pos;
	if (!running(s, &pos))
		return -ECANCELED;
	ssize_t n = store_fill_fd(s->store, fd, max, pos);
	if (n < 0) {
		if (store_error_is_store(n)) {
			int e = store_error_errno(n);
			store_failed(s, e);
			return -e;
		}
		return n;
	}
	if (n == 0)
		return 0;
	int r = mark_present(s, pos, (uint64_t)n, true);
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
	pthread_mutex_lock(&s->lock);
	bool ok = rangeset_contains(&s->present, off, off + len);
	pthread_mutex_unlock(&s->lock);
	if (!ok)
		return -ERANGE;
	return len ? store_pread(s->store, buf, len, off) : 0;
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

	ssize_t r = stream_wait(s, &sw.w);
	if (r == STREAM_PARKED) {
		pthread_mutex_lock(&sw.m);
		while (!sw.done)
			pthread_cond_wait(&sw.c, &sw.m);
		pthread_mutex_unlock(&sw.m);
		r = sw.w.result;
	}
	pthread_mutex_destroy(&sw.m);
	pthread_cond_destroy(&sw.c);
	if (r <= 0)
		return r;

	int n = stream_copy(s, buf, (size_t)r, off);
	return n < 0 ? n : r;
}

/* ---- random access ---------------------------------------------------- */

void stream_want(struct stream *s, uint64_t off, uint64_t len)
{
	if (!stream_can_fetch(s) || len == 0)
		return;
	struct range ask[8]; /* gaps to fetch; more are asked on the next read */
	int nask = 0;
	uint64_t end = off + len;
	pthread_mutex_lock(&s->lock);
	if (s->state != STREAM_RUNNING) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	if (s->length >= 0 && end > (uint64_t)s->length)
		end = (uint64_t)s->length;
	if (end > s->store_limit) /* nothing past it can be stored */
		end = s->store_limit;
	uint64_t a = off;
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
		/* Near the frontier the sequential fill is faster than a fetch. */
		bool far = a >= s->frontier && a - s->frontier >= s->fetch_distance;
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

/* ---- status ----------------------------------------------------------- */

void stream_get_info(struct stream *s, struct stream_info *out)
{
	pthread_mutex_lock(&s->lock);
	out->state = s->state;
	out->bytes = s->present.total;
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
