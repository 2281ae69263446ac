/*
 * url_fetch.c - range fetches: the bytes a reader waits for, fetched out
 * of order, ahead of the sequential fill (url_transfer.c).
 *
 * A read the stream cannot answer becomes a fetch (url_fetch(), from the
 * reader's thread), handed to the loop thread. There it is dropped if the
 * fill is about to bring those bytes anyway (fill=all: within url_src.near
 * of it; fill=ondemand: inside the first request), else queued (FIFO,
 * neighbouring misses merged) and sent as "Range: bytes=A-B" with If-Range,
 * at most MAX_RANGES at once per stream, once the first response has told
 * the validators. Each answer passes the same checks as the fill's
 * (url_check_206(), url_same_version()): two versions of a resource are
 * never mixed.
 *
 * What happens to a range that does not come: retried (RANGE_TRIES in
 * all), then given back to the fill ("unwanted": the reader waits for the
 * fill) with fill=all, or failing the stream with fill=ondemand, which has
 * no fill to fall back on. A server that ignores ranges turns the stream
 * into a plain download (no_ranges()). With fill=ondemand and no total
 * known (Content-Range totals of "*"), a 416 is how the end is found
 * (end_found()).
 */
#include "url.h"

#include "log.h"
#include "sources.h"
#include "streamfs/cache.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pump_queue(struct url_src *u);

/* ---- one range request ---------------------------------------------- */

/* The headers are in: is the body the part asked for? Returns false to
 * abort the request (what it found is in @x for url_range_done()). */
static bool range_check(struct xfer *x)
{
	struct url_src *u = x->u;
	x->got_headers = true;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->code);
	if (x->code == 416) {
		/* Nothing at pos: past the end, or the resource shrank. */
		x->past_end = true;
		x->end_total = url_total_of_416(x);
		if (u->length >= 0 && x->pos < (uint64_t)u->length) {
			url_changed_416(x, x->end_total, x->pos);
			x->failure = EIO;
		}
		return false;
	}
	if (x->code >= 400) {
		snprintf(x->failmsg, sizeof(x->failmsg), "HTTP %ld", x->code);
		x->collect = true; /* its body may say why (S3's <Error><Code>) */
		return true;       /* retried, then left to the sequential fill */
	}
	if (!url_same_version(x)) {
		x->failure = EIO;
		return false;
	}
	if (x->code != 206) {
		if (x->code == 200 && !url_same_length(x, url_content_length(x))) {
			x->failure = EIO;
			return false;
		}
		x->norange = true;
		return false;
	}
	if (!url_check_206(x, x->pos, x->end - 1, NULL)) {
		x->failure = EIO;
		return false;
	}
	return true;
}

/*
 * Store @n bytes at x->pos: 0, -ENOBUFS (@stored says how many were), or
 * the store's error.
 */
static int range_store(struct xfer *x, const char *data, size_t n, size_t *stored)
{
	int r = 0;
	*stored = 0;
	while (*stored < n) {
		size_t got = 0;
		r = xfer_store(x, data + *stored, n - *stored, 0, &got);
		*stored += got;
		if (r != -ENOBUFS || !stream_held_reader_in(x->u->s, x->pos, x->end))
			break;
		/* No room for the bytes at x->pos, and a reader whose room is
		 * reserved waits in what this transfer brings: pausing here
		 * could wait for good (that reader's blocks may be all the
		 * budget has). Drop them up to the next block, as if stored
		 * and evicted at once (a read of them asks again), and go on:
		 * the reader's own blocks take its bytes. */
		uint64_t edge = (x->pos / CACHE_BLOCK + 1) * CACHE_BLOCK;
		size_t d = edge - x->pos < n - *stored ? (size_t)(edge - x->pos) : n - *stored;
		stream_unwant(x->u->s, x->pos, d);
		x->pos += d;
		*stored += d;
		r = 0;
	}
	return r;
}

/*
 * Coalescing, as the fill does (url_transfer.c): curl hands over 16 KiB
 * at a time, and a range stored piece by piece cost a pwrite() and the
 * stream's bookkeeping per piece: the 7 MiB tail that `file` reads was
 * 448 of them on the I/O thread, while the fill shared it. The pieces
 * are gathered in x->cbuf and stored COALESCE bytes at a time, at the
 * end of every curl round (url_range_flush_round(), so a reader waits no
 * longer than before), and before the end of the request is handled.
 * Returns 0, -ENOBUFS (what was not stored stays gathered), or the
 * store's error (what was gathered is dropped).
 */
static int range_flush(struct xfer *x)
{
	size_t stored = 0;
	int r = x->clen ? range_store(x, x->cbuf, x->clen, &stored) : 0;
	return url_gathered_stored(x, stored, r);
}

/* The store refused the bytes for good: the request ends (the next write
 * callback returns 0) and url_range_done() says why. */
static void range_refused(struct xfer *x, int r)
{
	x->unstorable = r == -EFBIG;
	/* Otherwise the stream takes no more bytes (cancelled, or failed by
	 * the store) and the loop may not know yet: no retry. */
	if (r != -EFBIG)
		x->u->stopped = true;
}

/* No room for the bytes: the request pauses and leaves its slot to the
 * next one, which may be for a reader whose room is already reserved (its
 * bytes are what frees room for this one). url_fetch_resume() goes on. */
static void range_pause(struct xfer *x)
{
	x->paused = true;
	x->u->npaused++;
	url_fetch_kick(x->u);
}

void url_range_flush_round(struct xfer *x)
{
	if (x->u->cancelled) {
		x->clen = 0;
		url_ungathered(x);
		return;
	}
	int r = range_flush(x);
	if (r == -ENOBUFS) {
		url_ungathered(x); /* the resume stores them */
		if (!x->paused && x->easy) {
			curl_easy_pause(x->easy, CURLPAUSE_RECV);
			range_pause(x);
		}
	} else if (r < 0) {
		range_refused(x, r);
	}
}

static size_t range_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct xfer *x = userp;
	size_t n = size * nmemb, total = n, k = 0;
	if (x->u->cancelled || x->u->stopped || x->unstorable)
		return 0; /* refused: see range_refused() */
	if (!x->got_headers && !range_check(x))
		return 0;
	if (x->collect) {
		if (x->errbody_len == sizeof(x->errbody))
			return 0;
		xfer_collect(x, data, n);
		return n;
	}
	/* Bytes stored before a pause, delivered again by curl. */
	if (x->skip) {
		k = x->skip < n ? (size_t)x->skip : n;
		data += k;
		n -= k;
	}
	/* The gathered bytes belong at x->pos, this piece after them. */
	uint64_t at = x->pos + x->clen;
	size_t take = at + n > x->end ? (at < x->end ? (size_t)(x->end - at) : 0) : n, stored = 0;
	int r = 0;
	if (x->clen && x->clen + take > COALESCE)
		r = range_flush(x); /* nothing of this piece is stored yet */
	if (r == 0 && take) {
		if (!x->cbuf && take < COALESCE)
			x->cbuf = malloc(COALESCE);
		if (x->cbuf && take < COALESCE) {
			memcpy(x->cbuf + x->clen, data, take);
			x->clen += take;
			url_gathered(x);
			stored = take;
		} else {
			r = range_store(x, data, take, &stored);
		}
	}
	if (r == -ENOBUFS) {
		/* curl delivers these bytes again once resumed: what was
		 * taken of them is skipped then. */
		x->skip += stored;
		range_pause(x);
		return CURL_WRITEFUNC_PAUSE;
	}
	if (r < 0) {
		range_refused(x, r);
		return 0;
	}
	x->skip -= k;
	return total;
}

static void start_range(struct url_src *u, const struct fetch_req *q)
{
	struct xfer *x = calloc(1, sizeof(*x));
	if (x) {
		x->u = u;
		x->is_range = true;
		x->from = x->pos = q->off;
		x->end = q->end;
		x->tries = q->tries;
	}
	if (!x || xfer_open(x, range_write_cb) < 0) {
		free(x);
		stream_unwant(u->s, q->off, q->end - q->off);
		return;
	}
	xfer_if_range(x);
	char range[64];
	snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, q->off, q->end - 1);
	curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
	log_debug("%s: range GET %s", stream_name(u->s), range);
	if (xfer_send(x) != CURLM_OK) {
		xfer_close(x);
		free(x);
		stream_unwant(u->s, q->off, q->end - q->off);
		return;
	}
	LIST_INSERT_HEAD(&u->ranges, x, link);
	u->nranges++;
}

static void range_free(struct xfer *x)
{
	LIST_REMOVE(x, link);
	x->u->nranges--;
	if (x->paused)
		x->u->npaused--;
	url_ungathered(x);
	xfer_close(x);
	free(x->cbuf);
	free(x);
}

/* ---- the queue ------------------------------------------------------ */

static void enqueue(struct url_src *u, uint64_t off, uint64_t end, int tries)
{
	struct fetch_req *q;
	for (q = TAILQ_FIRST(&u->queue); q; q = TAILQ_NEXT(q, link)) {
		/* Neighbouring misses become one request. */
		if (q->end == off && q->tries == tries) {
			q->end = end;
			return;
		}
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		stream_unwant(u->s, off, end - off);
		return;
	}
	q->u = u;
	q->off = off;
	q->end = end;
	q->tries = tries;
	TAILQ_INSERT_TAIL(&u->queue, q, link);
}

static void pump_queue(struct url_src *u)
{
	struct fetch_req *q;
	while (u->active && u->ready && u->nranges - u->npaused < MAX_RANGES &&
	       (q = TAILQ_FIRST(&u->queue))) {
		TAILQ_REMOVE(&u->queue, q, link);
		/* Bytes that came while it waited (the persistent cache's
		 * copy, adopted with the first response) are not fetched. */
		uint64_t have = stream_run_end(u->s, q->off);
		if (have > q->off)
			stream_unwant(u->s, q->off, (have < q->end ? have : q->end) - q->off);
		if (have < q->end) {
			q->off = have;
			start_range(u, q);
		}
		free(q);
	}
}

/* Drop the queue; with @unwant, its ranges go back to the sequential
 * fill (their readers wait for it). */
static void drop_queue(struct url_src *u, bool unwant)
{
	struct fetch_req *q;
	while ((q = TAILQ_FIRST(&u->queue))) {
		TAILQ_REMOVE(&u->queue, q, link);
		if (unwant)
			stream_unwant(u->s, q->off, q->end - q->off);
		free(q);
	}
}

static void pump_call(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	assert(ioloop_in_loop(u->loop));
	u->pump_queued = false;
	pump_queue(u);
	stream_unref(s); /* the ref of this call */
}

void url_fetch_kick(struct url_src *u)
{
	if (!TAILQ_EMPTY(&u->queue) && !u->pump_queued &&
	    source_call_in_loop(u->s, u->loop, pump_call, u) == 0)
		u->pump_queued = true;
}

void url_fetch_stop(struct url_src *u)
{
	/* What they were bringing is no longer on its way: not wanted, so a
	 * later read asks for it again (the stream may complete while they
	 * run, with bytes below the end evicted and a reader waiting). */
	struct xfer *x;
	while ((x = LIST_FIRST(&u->ranges))) {
		if (x->pos < x->end)
			stream_unwant(u->s, x->pos, x->end - x->pos);
		range_free(x);
	}
	drop_queue(u, true);
}

void url_fetch_resume(struct url_src *u)
{
	/* url_range_done() frees its request and may end the source, which
	 * frees every other (url_fetch_stop()): after one, the walk starts
	 * again from the head. Each such restart has one paused request
	 * fewer; one that curl_easy_pause() pauses again stays paused. */
	bool again = true;
	while (again && u->active) {
		again = false;
		struct xfer *x;
		for (x = LIST_FIRST(&u->ranges); x; x = LIST_NEXT(x, link)) {
			if (!x->paused)
				continue;
			int r = range_flush(x);
			if (r == -ENOBUFS)
				continue; /* still no room: the next resume tries again */
			if (r < 0)
				range_refused(x, r);
			x->paused = false;
			u->npaused--;
			/* A refusal of the kept bytes comes back here, and curl
			 * does not go on with the request (url_transfer.c,
			 * fill_unpause()): it ends here. */
			CURLcode rc =
			    x->done_wait ? x->done_rc : curl_easy_pause(x->easy, CURLPAUSE_CONT);
			if (x->done_wait || rc != CURLE_OK) {
				url_range_done(x, rc);
				again = true;
				break;
			}
		}
	}
}

/* ---- when a range does not come ------------------------------------- */

/* fill=all: the sequential fill must bring [pos, ...) after all (a range
 * fetch gave up on it): restart it there if it has gone past or stopped. */
static void refill_from(struct url_src *u, uint64_t pos)
{
	if (u->ondemand || (u->fill.easy && u->fill.pos <= pos))
		return;
	url_fill_stop(u);
	u->fill.pos = pos;
	u->jump = 0;
	url_fill_start(u);
}

/* The server does not do ranges after all: everything comes sequentially. */
static void no_ranges(struct url_src *u)
{
	if (!u->no_ranges)
		log_warn("%s: the server ignores Range requests; reads ahead wait for the "
		         "sequential download",
		         stream_name(u->s));
	u->no_ranges = true;
	u->evictable = false;
	stream_set_evictable(u->s, false);
	stream_set_fetch_distance(u->s, UINT64_MAX);
	drop_queue(u, true);
	u->ondemand = false;
	u->head_end = 0;
	refill_from(u, stream_run_end(u->s, 0));
}

/*
 * fill=ondemand, the total unknown (Content-Range totals of "*"): a 416
 * says nothing is at @at. If the bytes up to @at are known to exist (or
 * the 416 gives the total), that is the end: the stream gets its length,
 * and reads at or past it return 0. If @at is past the furthest byte seen,
 * the end lies in between: fetching from there to @end finds it (a short
 * 206, then a 416 right at its end) or brings the bytes at @at after all.
 * Returns false if the stream failed.
 */
static bool end_found(struct url_src *u, uint64_t at, uint64_t end, int64_t total, int tries)
{
	if (total < 0 && at > u->seen_end) {
		if (tries + 1 < RANGE_TRIES) {
			enqueue(u, u->seen_end, end, tries + 1);
			return true;
		}
		stream_fail(u->s, EIO, "range fetch at byte %" PRIu64 " failed: HTTP 416", at);
	} else {
		uint64_t len = total >= 0 ? (uint64_t)total : at;
		if (len <= at && len >= u->seen_end && stream_set_length(u->s, len) == 0) {
			u->length = (int64_t)len;
			return true;
		}
		stream_fail(u->s, EIO,
		            "the resource changed on the server (HTTP 416 at byte %" PRIu64
		            ", after bytes up to %" PRIu64 ")",
		            at, u->seen_end);
	}
	url_done(u);
	return false;
}

/* What a finished range request leaves to decide, once it is freed. */
struct range_outcome {
	uint64_t pos, end; /* still wanted: [pos, end) */
	int tries;
	bool ok;       /* curl finished it without an error */
	bool progress; /* it brought bytes */
	bool norange, past_end, unstorable;
	int64_t end_total;
	int failure;
	char msg[CURL_ERROR_SIZE + 64]; /* why it stopped short */
};

static void take_outcome(struct range_outcome *o, const struct xfer *x, CURLcode rc)
{
	o->pos = x->pos;
	o->end = x->end;
	o->tries = x->tries;
	o->ok = rc == CURLE_OK;
	o->progress = x->pos > x->from;
	o->norange = x->norange;
	o->past_end = x->past_end;
	o->unstorable = x->unstorable;
	o->end_total = x->end_total;
	o->failure = x->failure;
	if (x->failmsg[0])
		snprintf(o->msg, sizeof(o->msg), "%s", x->failmsg);
	else if (rc == CURLE_OK)
		snprintf(o->msg, sizeof(o->msg),
		         "HTTP %ld ended at byte %" PRIu64 ", short of %" PRIu64, x->code, x->pos,
		         x->end);
	else if (x->errbuf[0])
		snprintf(o->msg, sizeof(o->msg), "%s", x->errbuf);
	else
		snprintf(o->msg, sizeof(o->msg), "%s", curl_easy_strerror(rc));
}

/*
 * A range past the store's limit: its readers got EFBIG, the stream goes on,
 * and asking again would only be refused again. Returns false (the source
 * is done) if the stream stopped after all: its -EFBIG was for bytes past
 * the announced length.
 */
static bool range_unstorable(struct url_src *u, const struct range_outcome *o)
{
	stream_unwant(u->s, o->pos, o->end - o->pos);
	struct stream_info in;
	stream_get_info(u->s, &in);
	if (in.state == STREAM_RUNNING)
		return true;
	url_done(u);
	return false;
}

/* A 416: nothing at o->pos. Returns false if the source is done. */
static bool range_past_end(struct url_src *u, const struct range_outcome *o)
{
	bool probing = false;
	if (u->length < 0 && u->ondemand) {
		if (!end_found(u, o->pos, o->end, o->end_total, o->tries))
			return false;
		probing = u->length < 0; /* it brings [pos, end) too: still wanted */
	} else if (u->length < 0) {
		refill_from(u, o->pos); /* the sequential fill finds the end */
	}
	if (!probing)
		stream_unwant(u->s, o->pos, o->end - o->pos);
	return true;
}

/* The request stopped short of o->end: ask again, or give up on the
 * range. Returns false if the source is done. */
static bool range_short(struct url_src *u, const struct range_outcome *o)
{
	if (o->ok && o->progress && u->length < 0) {
		/* No total: a short 206 is how the data ends. Ask for the rest
		 * (not a failed try: every round brings bytes). */
		enqueue(u, o->pos, o->end, o->tries);
	} else if (o->tries + 1 < RANGE_TRIES) {
		log_warn("%s: range fetch at byte %" PRIu64 " failed (%s); trying again",
		         stream_name(u->s), o->pos, o->msg);
		enqueue(u, o->pos, o->end, o->tries + 1);
	} else {
		stream_unwant(u->s, o->pos, o->end - o->pos);
		if (u->ondemand) {
			stream_fail(u->s, EIO, "range fetch at byte %" PRIu64 " failed: %s", o->pos,
			            o->msg);
			url_done(u);
			return false;
		}
		refill_from(u, o->pos);
	}
	return true;
}

/*
 * The stream is complete (the fill is over), no range transfer runs and
 * none is queued: nothing is being fetched, so nothing is wanted any more.
 * (Not while the fill runs: with fill=ondemand its requests own wanted
 * ranges too.) A reader still parked then asks again. Its
 * bytes can be missing with their range still marked wanted when an
 * eviction took part of what a transfer had brought while it ran (a
 * reader with no room reserved pins nothing); without this it would wait
 * for a transfer that is over.
 */
static void reask_idle(struct url_src *u)
{
	stream_unwant(u->s, 0, UINT64_MAX);
	stream_reask(u->s);
}

/* The stream is complete, a range of evicted bytes came back (or not):
 * retry, or tell the readers; the source rests when no transfer is left. */
static void refetch_done(struct url_src *u, const struct range_outcome *o)
{
	if (o->norange || o->unstorable || o->past_end) {
		/* Nothing comes back from this server any more. */
		u->evictable = false;
		stream_set_evictable(u->s, false);
		stream_fetch_failed(u->s, o->pos, o->end - o->pos);
	} else if (o->pos < o->end) {
		if (o->tries + 1 < RANGE_TRIES) {
			log_warn("%s: fetching evicted bytes at %" PRIu64
			         " failed (%s); trying again",
			         stream_name(u->s), o->pos, o->msg);
			enqueue(u, o->pos, o->end, o->tries + 1);
		} else {
			log_warn("%s: fetching evicted bytes at %" PRIu64 " failed: %s",
			         stream_name(u->s), o->pos, o->msg);
			stream_fetch_failed(u->s, o->pos, o->end - o->pos);
		}
	}
	pump_queue(u);
	if (LIST_EMPTY(&u->ranges) && TAILQ_EMPTY(&u->queue)) {
		reask_idle(u);
		if (LIST_EMPTY(&u->ranges) && TAILQ_EMPTY(&u->queue))
			url_done(u); /* woken again by the next fetch */
	}
}

void url_range_done(struct xfer *x, CURLcode rc)
{
	struct url_src *u = x->u;
	assert(ioloop_in_loop(u->loop));
	if (x->clen && u->active && !u->cancelled && !u->stopped) {
		/* Every byte received is stored before the end is handled. */
		int r = range_flush(x);
		if (r == -ENOBUFS) {
			log_debug("%s: range at %" PRIu64 ": its last %zu bytes wait for room",
			          stream_name(u->s), x->pos, x->clen);
			x->done_wait = true; /* url_fetch_resume() goes on */
			x->done_rc = rc;
			if (!x->paused)
				range_pause(x);
			return;
		}
		if (r < 0)
			range_refused(x, r);
	}
	if (rc == CURLE_OK && !x->got_headers && u->active && !u->cancelled)
		range_check(x); /* an empty body: no write callback ran */
	xfer_explain(x);
	struct range_outcome o;
	take_outcome(&o, x, rc);
	range_free(x);
	if (!u->active || u->cancelled)
		return;
	if (u->stopped) {
		url_done(u); /* the stream takes no more bytes: nothing to retry */
		return;
	}
	if (o.failure) {
		stream_fail(u->s, o.failure, "%s", o.msg);
		url_done(u);
		return;
	}
	if (u->complete) {
		refetch_done(u, &o);
		return;
	}
	if (u->length >= 0 && o.end > (uint64_t)u->length) /* the end was found meanwhile */
		o.end = o.pos > (uint64_t)u->length ? o.pos : (uint64_t)u->length;
	bool go_on = true;
	if (o.unstorable) {
		go_on = range_unstorable(u, &o);
	} else if (o.past_end) {
		go_on = range_past_end(u, &o);
	} else if (o.norange) {
		stream_unwant(u->s, o.pos, o.end - o.pos);
		no_ranges(u);
	} else if (o.pos < o.end) {
		go_on = range_short(u, &o);
	}
	if (go_on && !url_all_present(u))
		pump_queue(u);
}

/* ---- a reader's fetch ----------------------------------------------- */

/* Will the sequential fill (or the first request) bring [off, end) soon?
 * Not while the budget pauses it: it may not go on before the reader that
 * asked has its bytes. */
static bool fill_brings(const struct url_src *u, uint64_t off, uint64_t end)
{
	if (!u->fill.easy || u->fill.paused || off < u->fill.pos)
		return false;
	return u->ondemand ? end <= u->head_end : off - u->fill.pos < u->near;
}

static void fetch_in_loop(void *arg)
{
	struct fetch_req *q = arg;
	struct url_src *u = q->u;
	struct stream *s = u->s;
	assert(ioloop_in_loop(u->loop));
	if (!u->active && u->complete && u->evictable && !u->cancelled) {
		/* Evicted bytes of a complete stream: wake the source for as
		 * long as range transfers run. */
		source_take(s);
		u->active = true;
	}
	if (!u->active || u->cancelled) {
		free(q);
	} else if (u->no_ranges || !u->is_http || fill_brings(u, q->off, q->end)) {
		/* Its reader waits for the fill: a fresh one waits no more. */
		url_fill_wanted_now(u);
		stream_unwant(s, q->off, q->end - q->off);
		free(q);
	} else {
		enqueue(u, q->off, q->end, 0);
		free(q);
		pump_queue(u);
	}
	stream_unref(s); /* the ref of this call */
}

void url_fetch(struct stream *s, void *src, uint64_t off, uint64_t len)
{
	struct url_src *u = src;
	struct fetch_req *q = calloc(1, sizeof(*q));
	if (!q) {
		stream_unwant(s, off, len);
		return;
	}
	q->u = u;
	q->off = off;
	q->end = off + len;
	if (source_call_in_loop(s, u->loop, fetch_in_loop, q) < 0) {
		stream_unwant(s, off, len);
		free(q);
	}
}
