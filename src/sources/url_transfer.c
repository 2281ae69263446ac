/*
 * url_transfer.c - the sequential fill of a URL stream: one request after
 * another, from byte 0 to the end, each resuming where the last stopped.
 *
 *  - The first response (url_src.ready false) teaches the length and the
 *    validator (learn_resource()); the length is announced before any
 *    body byte, so stat shows it at once.
 *  - A drop, a stall, a body cut short or a retryable status (5xx, 408,
 *    429) is retried from fill.pos with "Range: bytes=N-" and If-Range,
 *    after a backoff (1 s doubling to 30 s, or Retry-After) while the
 *    retry count and the total retry time allow (retry()). A Retry-After
 *    longer than the retry time fails the stream at once.
 *  - Every later response must be the same version (check_again()); a
 *    200 to a range request is the whole body again: its first bytes are
 *    skipped.
 *  - Redirects are followed here, not by libcurl (follow_redirect()), so
 *    that the file's headers and credentials stay behind when a redirect
 *    leaves the original scheme, host or port (unless location_trusted),
 *    and only http, https, ftp and ftps targets are taken.
 *  - 4xx (but 408/429), DNS, TLS and connection errors on the first
 *    request fail the stream at byte 0 with a message saying which.
 *  - fill=all: the fill jumps over what range fetches brought or are
 *    bringing (url_src.jump); fill=ondemand: the first request asks for
 *    the head only, and the rest comes through url_fetch.c.
 *
 * Errors found inside a curl callback are noted in the xfer (xfer_fail(),
 * retry_now) and acted on when the request is done (url_fill_done()).
 */
#include "url.h"

#include "log.h"
#include "streamfs/persist.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000

/* ---- the response --------------------------------------------------- */

/* A 206 to the first request: the total is in its Content-Range. A 200
 * to fill=ondemand's head request: no ranges here, download it all.
 * Returns false with the failure set. */
static bool first_body(struct url_src *u, int64_t *length)
{
	struct xfer *x = &u->fill;
	if (x->code == 206) {
		/* fill=ondemand asked for the head, bytes 0-262143; a plain GET
		 * takes a 206 only if it starts at byte 0 (a revalidation of
		 * the persistent cache: at the byte it asked for). The total is
		 * in Content-Range ("bytes 0-262143/52428800"; "*": unknown). */
		if (!url_check_206(x, x->pos, u->ondemand ? u->head_end - 1 : UINT64_MAX, length)) {
			x->failure = EIO;
			return false;
		}
	} else if (u->ondemand) {
		u->ondemand = false;
		u->no_ranges = true;
		u->head_end = 0;
		stream_set_fetch_distance(u->s, UINT64_MAX);
		log_warn("%s: the server ignores Range requests; fill=ondemand falls back "
		         "to downloading everything",
		         stream_name(u->s));
	}
	return true;
}

/* The first response's validators, kept and shown. */
static void learn_validators(struct url_src *u)
{
	char etag[512] = "", lm[256] = "";
	bool has_etag = url_header(&u->fill, "ETag", etag, sizeof(etag));
	bool has_lm = url_header(&u->fill, "Last-Modified", lm, sizeof(lm));
	if (has_etag && strncmp(etag, "W/", 2) == 0)
		has_etag = false; /* weak: not usable with If-Range */
	if (has_etag && !(u->etag = strdup(etag)))
		has_etag = false;
	if (has_lm && !(u->last_modified = strdup(lm)))
		has_lm = false;
	if (has_etag)
		stream_set_attr(u->s, "etag", "%s", etag);
	if (has_lm) {
		stream_set_attr(u->s, "last_modified", "%s", lm);
		/* The file's mtime, as curl -R would set it. */
		time_t t = curl_getdate(lm, NULL);
		if (t > 0)
			stream_set_attr(u->s, "mtime", "%lld", (long long)t);
	}
}

static void grace_begin(struct url_src *u, bool ranges);

/* The first response of the resource (2xx): learn its length and
 * validators. Returns false to abort the transfer (failure set). */
static bool learn_resource(struct url_src *u)
{
	int64_t length = url_content_length(&u->fill);
	if (!first_body(u, &length))
		return false;
	u->ready = true;
	url_fetch_kick(u);
	learn_validators(u);
	if (length >= 0 && u->length < 0) {
		u->length = length;
		if (stream_set_length(u->s, (uint64_t)length) < 0) {
			xfer_fail(&u->fill, EIO, "the length changed to %" PRId64, length);
			return false;
		}
	}
	/* Bytes that can be fetched again, and checked to be the same
	 * version, may be evicted from the store. */
	char ar[64] = "";
	bool ranges =
	    u->fill.code == 206 ||
	    (url_header(&u->fill, "Accept-Ranges", ar, sizeof(ar)) && strcasecmp(ar, "bytes") == 0);
	if (ranges && !u->no_ranges && (u->etag || u->last_modified)) {
		u->evictable = true;
		stream_set_evictable(u->s, true);
	}
	if (u->opts.persist) {
		persist_set_resource(u->opts.persist, u->length, u->etag, u->last_modified);
		if (u->adopt) {
			u->adopt = false;
			persist_adopt(u->opts.persist);
		}
	}
	grace_begin(u, ranges);
	return true;
}

static bool retryable_code(long code)
{
	return code == 408 || code == 429 || (code >= 500 && code <= 599);
}

/* A retryable status: when to try again. Returns false (retry or failure
 * set). */
static bool retry_later(struct url_src *u)
{
	struct xfer *x = &u->fill;
	char v[128];
	uint64_t budget = (uint64_t)(u->opts.retry_time * 1000);
	snprintf(x->failmsg, sizeof(x->failmsg), "HTTP %ld", x->code);
	x->retry_now = true;
	x->retry_after_ms = -1;
	if (url_header(x, "Retry-After", v, sizeof(v)) &&
	    url_parse_retry_after(v, budget, &x->retry_after_ms) > 0) {
		/* Waiting that long would outlast the retries: give up now. */
		x->retry_now = false;
		xfer_fail(x, EIO,
		          "HTTP %ld with Retry-After: %.40s, longer than the retry time (%g s)",
		          x->code, v, u->opts.retry_time);
	}
	return false;
}

/* ---- the persistent cache's copy --------------------------------------- */

/* Does the response carry the cached copy's validator and length? If not,
 * @why says what differs. A copy with an ETag needs the same strong ETag;
 * one without needs the same Last-Modified and length (and still no
 * ETag: a validator that appeared is a change too). */
static bool same_as_cached(struct url_src *u, int64_t total, char *why, size_t size)
{
	struct xfer *x = &u->fill;
	char etag[512] = "", lm[256] = "";
	bool has_etag = url_header(x, "ETag", etag, sizeof(etag)) && strncmp(etag, "W/", 2) != 0;
	bool has_lm = url_header(x, "Last-Modified", lm, sizeof(lm));
	if (u->reval_etag[0] && (!has_etag || strcmp(etag, u->reval_etag) != 0)) {
		snprintf(why, size, "ETag %.80s, was %.80s", has_etag ? etag : "(none)",
		         u->reval_etag);
		return false;
	}
	if (!u->reval_etag[0] && (has_etag || !has_lm || strcmp(lm, u->reval_lm) != 0)) {
		snprintf(why, size, "Last-Modified %.60s, was %.60s%s", has_lm ? lm : "(none)",
		         u->reval_lm, has_etag ? ", and an ETag now" : "");
		return false;
	}
	if (total != u->reval_length) {
		snprintf(why, size, "%" PRId64 " bytes, was %" PRId64, total, u->reval_length);
		return false;
	}
	return true;
}

/*
 * The answer to the revalidation of the persistent cache's copy (the
 * first request asked for its first missing byte with If-Range). The same
 * version (a 206, or a 200 from a server that ignores Range) adopts the
 * copy once the length is set; another version (a 200, a 416, a 206 with
 * other validators) discards it and the fill starts again from byte 0, as
 * for a resource never seen. Other statuses say nothing about the copy:
 * they go the usual way, and the next request revalidates again.
 * Returns false to abort the transfer.
 */
static bool revalidated(struct url_src *u)
{
	struct xfer *x = &u->fill;
	char why[256] = "";
	if (x->code >= 400 && x->code != 416) {
		if (retryable_code(x->code))
			return retry_later(u);
		xfer_fail(x, EIO, "HTTP %ld", x->code);
		return false;
	}
	int64_t total = -1;
	if (x->code == 206 &&
	    !url_check_206(x, x->pos, u->ondemand ? u->head_end - 1 : UINT64_MAX, &total)) {
		x->failure = EIO;
		return false;
	}
	if (x->code == 200)
		total = url_content_length(x);
	if (x->code == 416)
		snprintf(why, sizeof(why), "HTTP 416 for byte %" PRIu64, x->pos);
	if ((x->code == 200 || x->code == 206) && same_as_cached(u, total, why, sizeof(why))) {
		u->reval = false;
		u->adopt = true;
		if (x->code == 200)
			x->pos = 0; /* the whole body: what is cached is skipped */
		return learn_resource(u);
	}
	if (!why[0])
		snprintf(why, sizeof(why), "HTTP %ld", x->code);
	char msg[300];
	snprintf(msg, sizeof(msg), "the resource changed on the server (%s)", why);
	persist_discard(u->opts.persist, msg);
	u->reval = false;
	u->restart = true;
	return false;
}

/* A later response (a resumed or repeated request, 2xx): same version,
 * same length, the part asked for? Returns false with failure set if not. */
static bool check_again(struct url_src *u)
{
	struct xfer *x = &u->fill;
	if (!url_same_version(x)) {
		x->failure = EIO;
		return false;
	}
	if (x->code == 206) {
		uint64_t to = u->ondemand && u->head_end > x->pos ? u->head_end - 1 : UINT64_MAX;
		if (!url_check_206(x, x->pos, to, NULL)) {
			x->failure = EIO;
			return false;
		}
		return true;
	}
	/* A 200: the whole body again. */
	if (x->range_asked && !u->no_ranges) {
		u->no_ranges = true;
		log_warn("%s: the server ignores Range requests; skipping %" PRIu64
		         " bytes of a full response",
		         stream_name(u->s), x->pos);
	}
	if (!url_same_length(x, url_content_length(x))) {
		x->failure = EIO;
		return false;
	}
	x->skip = x->pos;
	return true;
}

/* FTP: the size, if the first request tells it. */
static bool check_ftp(struct url_src *u)
{
	if (u->length < 0) {
		int64_t cl = url_content_length(&u->fill);
		if (cl >= 0 && u->fill.pos == 0) {
			u->length = cl;
			stream_set_length(u->s, (uint64_t)cl);
		}
	}
	return true;
}

/*
 * The headers of the final response of this request are in: decide what
 * its body is. Returns false to abort the transfer (failure or retry set).
 */
static bool check_response(struct url_src *u)
{
	struct xfer *x = &u->fill;
	x->got_headers = true;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->code);
	if (!u->is_http)
		return check_ftp(u);
	stream_set_attr(u->s, "http_code", "%ld", x->code);
	if (x->code >= 300 && x->code < 400)
		return true; /* a redirect: followed when the transfer is done */
	if (u->reval && !u->ready)
		return revalidated(u);
	if (x->code == 416 && u->ondemand && !u->ready) {
		/* An empty resource cannot serve bytes 0-N: ask for all of it. */
		u->ondemand = false;
		u->head_end = 0;
		x->retry_now = true;
		x->retry_after_ms = 0;
		snprintf(x->failmsg, sizeof(x->failmsg), "HTTP 416");
		return false;
	}
	if (x->code == 416 && u->ready && u->length >= 0 && x->pos < (uint64_t)u->length) {
		url_changed_416(x, url_total_of_416(x), x->pos);
		x->failure = EIO;
		return false;
	}
	if (x->code >= 400) {
		if (retryable_code(x->code))
			return retry_later(u);
		xfer_fail(x, EIO, "HTTP %ld", x->code);
		x->collect = true; /* its body may say why (S3's <Error><Code>) */
		return true;
	}
	return u->ready ? check_again(u) : learn_resource(u);
}

/* ---- the body ------------------------------------------------------- */

/* fill=all: range fetches got to fill.pos first. Where the fill should
 * go on instead: after what they brought, and after what one of them is
 * still bringing from there on; 0 to go on here. */
static uint64_t jump_target(struct url_src *u)
{
	uint64_t pos = u->fill.pos;
	uint64_t re = stream_run_end(u->s, pos);
	uint64_t to = re - pos >= SKIP_MIN ? re : 0;
	struct xfer *r;
	for (r = LIST_FIRST(&u->ranges); r; r = LIST_NEXT(r, link))
		if (r->pos <= re && r->end > re && r->pos >= pos && r->end > to)
			to = r->end;
	return to;
}

/* ---- coalescing -------------------------------------------------------
 *
 * curl hands the write callback at most 16 KiB at a time
 * (CURL_MAX_WRITE_SIZE), whatever its buffer size: stored piece by piece,
 * 1 GiB from nginx was 66 000 pwrite() calls, each with the stream's
 * bookkeeping (its lock, the waiters, the budget). The fill's pieces are
 * gathered here and stored COALESCE bytes at a time; and whatever is
 * gathered is stored at the end of every curl round (url_flush_all(), from
 * url_multi.c), so a reader at the frontier waits no longer than before,
 * and before the end of a request is handled, so an error still comes
 * after every byte received before it. Bytes gathered belong at fill.pos;
 * nothing counts them as received until they are stored.
 *
 * No room in the budget (ENOBUFS): a piece that does not fit is refused
 * (CURL_WRITEFUNC_PAUSE, curl delivers it again), a round-end store that
 * finds no room pauses the transfer, and a request that ended meanwhile is
 * finished once the resume has stored its last bytes
 * (url_fill_flush_resume()).
 */

static LIST_HEAD(, xfer) g_gathered = LIST_HEAD_INITIALIZER(g_gathered);

void url_gathered(struct xfer *x)
{
	if (!x->cqueued) {
		LIST_INSERT_HEAD(&g_gathered, x, clink);
		x->cqueued = true;
	}
}

void url_ungathered(struct xfer *x)
{
	if (x->cqueued) {
		LIST_REMOVE(x, clink);
		x->cqueued = false;
	}
}

int url_gathered_stored(struct xfer *x, size_t stored, int r)
{
	if (r == -ENOBUFS) {
		/* What had room is stored: keep only the rest. */
		x->clen -= stored;
		memmove(x->cbuf, x->cbuf + stored, x->clen);
		return r;
	}
	x->clen = 0;
	url_ungathered(x);
	return r;
}

/* The store refused bytes for good: the fill cannot go on. */
static void store_refused(struct url_src *u, int r)
{
	/* The store's limit (EFBIG) leaves the stream running, but the
	 * sequential fill cannot go past it: a failure at that byte. */
	if (r == -EFBIG)
		stream_fail(u->s, EFBIG, "store: %s", strerror(EFBIG));
	u->stopped = true; /* cancelled, or failed by the store: nothing to retry */
}

/* Store the gathered bytes: 0, -ENOBUFS (kept), or the store's error
 * (dropped: the stream is cancelled or failed). */
static int fill_flush(struct xfer *x)
{
	if (!x->clen)
		return 0;
	size_t stored;
	int r = xfer_store(x, x->cbuf, x->clen, x->cflags, &stored);
	return url_gathered_stored(x, stored, r);
}

/* Take @n bytes for fill.pos + what is gathered: 0 (gathered or stored),
 * -ENOBUFS (not all taken: @taken says how many were stored), or the
 * store's error. */
static int fill_take(struct xfer *x, const char *data, size_t n, unsigned flags, size_t *taken)
{
	*taken = 0;
	if (x->clen && (x->clen + n > COALESCE || flags != x->cflags)) {
		int r = fill_flush(x);
		if (r < 0)
			return r;
	}
	if (!x->cbuf && n < COALESCE)
		x->cbuf = malloc(COALESCE);
	if (!x->cbuf || n >= COALESCE)
		return xfer_store(x, data, n, flags, taken);
	memcpy(x->cbuf + x->clen, data, n);
	x->clen += n;
	x->cflags = flags;
	url_gathered(x);
	return 0;
}

void url_fill_discard(struct url_src *u)
{
	u->fill.clen = 0;
	u->fill.done_wait = false;
	url_ungathered(&u->fill);
}

void url_flush_all(void)
{
	struct xfer *x, *next;
	for (x = LIST_FIRST(&g_gathered); x; x = next) {
		next = LIST_NEXT(x, clink);
		if (x->is_range) {
			url_range_flush_round(x);
			continue;
		}
		struct url_src *u = x->u;
		if (u->cancelled || u->stopped) {
			url_fill_discard(u);
			continue;
		}
		int r = fill_flush(x);
		if (r == -ENOBUFS) {
			/* The resume stores them, then lets curl go on. */
			url_ungathered(x);
			if (x->easy && !x->paused) {
				x->paused = true;
				curl_easy_pause(x->easy, CURLPAUSE_RECV);
			}
		} else if (r < 0) {
			store_refused(u, r); /* the next callback ends the request */
		}
	}
}

/*
 * Let a paused fill go on. curl delivers the bytes it kept from inside
 * curl_easy_pause(); if the write callback refuses them (the stream takes
 * no more bytes, or the fill jumps ahead), curl 7.88 returns that error
 * without scheduling the transfer again, and nothing would ever finish
 * the request: it is finished here, as curl would have reported it.
 */
static void fill_unpause(struct url_src *u)
{
	CURLcode rc = curl_easy_pause(u->fill.easy, CURLPAUSE_CONT);
	if (rc != CURLE_OK)
		url_fill_done(u, rc);
}

void url_fill_flush_resume(struct url_src *u)
{
	struct xfer *x = &u->fill;
	if (x->clen) {
		int r = fill_flush(x);
		if (r == -ENOBUFS)
			return; /* still no room: the next resume tries again */
		if (r < 0)
			store_refused(u, r);
	}
	if (x->done_wait) {
		x->done_wait = false;
		url_fill_done(u, x->done_rc);
	} else if (x->easy && x->paused) {
		x->paused = false;
		fill_unpause(u);
	}
}

/*
 * Sharing the loop. One call into curl for a socket with data reads until
 * the socket is empty or 100 reads are done (curl 7.88), and on a fast
 * server the fill's socket is never empty: a reader's range request (a
 * probe of the end of the file) waited behind such calls, first to be
 * started, then at each of its steps (connect, send, headers, body).
 * So once the fill has taken FILL_SHARE bytes in one round while other
 * work waits (other requests, the loop's other events, or queued calls
 * such as a new range to fetch), it pauses (CURL_WRITEFUNC_PAUSE: curl
 * keeps the piece and delivers it again) and a timer of 0 ms, which the
 * loop runs after the events and calls already waiting, lets it go on.
 * Alone, the fill never pauses. Measured (unzip -l of a 32 MiB zip from
 * nginx on a fresh mount, median of 9): its read of the zip's tail took
 * 21-25 ms before, about 10 ms with a share of 256 KiB (2 ms with
 * fill=ondemand, no fill to wait behind); unzip -l 60 -> 40 ms, the
 * local file 23. A share of 1 MiB gave 45 ms, 64 KiB no better than
 * 256 KiB.
 */
#define FILL_SHARE (256u << 10)

static LIST_HEAD(, xfer) g_yielded = LIST_HEAD_INITIALIZER(g_yielded);
static void yield_over(struct ioloop_timer *t);
static struct ioloop_timer g_yield_timer = {.cb = yield_over};

static void unyield(struct xfer *x)
{
	if (x->yielded) {
		LIST_REMOVE(x, ylink);
		x->yielded = false;
	}
}

static void yield_over(struct ioloop_timer *t)
{
	(void)t;
	/* The ones that paused until now: a resume can pause again at once
	 * (curl delivers up to a whole buffer from inside curl_easy_pause),
	 * and such a one waits for the next turn, not for this loop. */
	LIST_HEAD(, xfer) now = LIST_HEAD_INITIALIZER(now);
	struct xfer *x;
	while ((x = LIST_FIRST(&g_yielded))) {
		LIST_REMOVE(x, ylink);
		LIST_INSERT_HEAD(&now, x, ylink);
	}
	while ((x = LIST_FIRST(&now))) {
		/* unyield() is also url_fill_stop()'s way off this list. A
		 * pause for room (x->paused) is ended by its own resume. */
		unyield(x);
		if (x->easy && !x->paused)
			fill_unpause(x->u);
	}
	url_flush_all(); /* what the resumes delivered, outside a round */
}

/*
 * A fresh fill's grace: readers first. Most first opens of a file that is
 * not there yet are probes (stat, file, unzip -l, ffprobe: the start, the
 * end, a few pieces), and the stream starts at the first lookup. On a fast
 * source the fill then keeps the loop busy and, with a local server, both
 * CPUs of a small machine, and the probe (the tool's own process, its
 * range request at each step) waits behind it. So once the first response
 * of a fill=all stream has told the length, the fill holds
 * (CURL_WRITEFUNC_PAUSE: curl keeps the piece) until a reader waits for
 * bytes only the fill brings, or GRACE_MS pass; once per stream. The
 * engine says when such a reader parks (stream_hold_fill(), the source op
 * fill_wanted()), and so does a read near the fill that url_fetch.c
 * declines as a fetch; the fill then goes on through the same 0 ms timer
 * as a yield, outside any round. A sequential reader loses nothing: its
 * first read ends the grace, and the bytes curl kept come at once.
 * Only for HTTP servers that take ranges (else every reader waits for the
 * fill), never with fill=ondemand (no fill to hold). Measured: unzip -l
 * of a 32 MiB zip from nginx on a fresh mount, two CPUs, median of 15:
 * 9.7 ms before, 4.7 ms with the grace, 3.3 ms on the local file.
 * (Holding the fill also while a reader's range request runs gained
 * nothing measurable on top, and a fill held for long lets the socket
 * buffers fill with bytes a jump then throws away.)
 *
 * The head of the file comes with the first response anyway (curl reads
 * the socket in 512 KiB gulps): its first GRACE_HEAD bytes are stored
 * before the fill holds. A probe of the start (file, head, dd, ffprobe's
 * first read) then finds them present and is answered at once, without
 * waking the fill, and the fill stays held for the probe's next step.
 * Held from the first byte, the first 4 KiB of a fresh mount took
 * a reader's park, a call into the loop, the fill's resume, the store
 * write and a reply from the waker, and the fill then ran on both CPUs
 * while the probe closed the file and exited: that pread took 1.3-1.5 ms,
 * 0.14-0.24 ms now (medians of 15 and 25 fresh mounts, nginx on
 * 127.0.0.1). 128 KiB: one store write, and cat's first read; 64 and 256
 * KiB measured the same for unzip -l, which reads only the end.
 */
#define GRACE_MS 100
#define GRACE_HEAD (128u << 10)

/* GRACE_MS, or STREAMFS_TEST_GRACE_MS from the environment: the tests
 * stretch the grace to see what happens inside it on a loaded machine.
 * Read once, in the loop thread. */
static uint64_t grace_ms(void)
{
	static long ms = -1;
	if (ms < 0) {
		const char *e = getenv("STREAMFS_TEST_GRACE_MS");
		char *end;
		long v = e ? strtol(e, &end, 10) : -1;
		ms = e && *e && !*end && v > 0 && v <= 60000 ? v : GRACE_MS;
	}
	return (uint64_t)ms;
}

static void yield_later(struct xfer *x)
{
	if (LIST_EMPTY(&g_yielded))
		ioloop_timer_arm(x->u->loop, &g_yield_timer, 0);
	x->yielded = true;
	LIST_INSERT_HEAD(&g_yielded, x, ylink);
}

static void grace_over(struct url_src *u, const char *why)
{
	if (!u->grace)
		return;
	u->grace = false;
	ioloop_timer_disarm(u->loop, &u->grace_timer);
	stream_release_fill(u->s);
	log_debug("%s: the fill goes on (%s)", stream_name(u->s), why);
	struct xfer *x = &u->fill;
	if (x->held) {
		x->held = false;
		if (x->easy && !x->yielded)
			yield_later(x); /* resumed by yield_over(), outside any round */
	}
}

void url_fill_wanted_now(struct url_src *u)
{
	grace_over(u, "a reader waits for it");
}

void url_grace_fired(struct ioloop_timer *t)
{
	grace_over(t->data, "no reader came");
}

/* From learn_resource(), which runs once per stream (it sets u->ready).
 * @ranges: the first response says the server takes range requests. */
static void grace_begin(struct url_src *u, bool ranges)
{
	if (!u->is_http || u->ondemand || u->no_ranges || !ranges || !stream_hold_fill(u->s))
		return;
	u->grace = true;
	ioloop_timer_arm(u->loop, &u->grace_timer, grace_ms());
	log_debug("%s: the fill waits up to %llu ms for a reader (after the first %u KiB)",
	          stream_name(u->s), (unsigned long long)grace_ms(), GRACE_HEAD >> 10);
}

/* Should the fill that took @n more bytes in this round pause for now? */
static bool fill_yields(struct xfer *x, size_t n)
{
	uint64_t round = url_multi_round();
	if (x->round != round) {
		x->round = round;
		x->round_bytes = 0;
	}
	/* Already waiting for its turn (curl delivered again because a
	 * resume for room unpaused it): it stays on the list once. Put on it
	 * twice, the list became a cycle and yield_over() spun for good. */
	if (x->yielded)
		return true;
	if (x->round_bytes >= FILL_SHARE) {
		/* Asked once per share, not for every piece after it. */
		x->round_bytes = 0;
		if (url_multi_others_wait()) {
			yield_later(x);
			return true;
		}
	}
	x->round_bytes += n;
	return false;
}

static size_t fill_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct xfer *x = userp;
	struct url_src *u = x->u;
	size_t n = size * nmemb, total = n;
	if (u->cancelled || u->stopped)
		return 0;
	if (!x->got_headers && !check_response(u))
		return 0;
	if (x->collect) {
		if (x->errbody_len == sizeof(x->errbody))
			return 0; /* enough to say why: the failure is set */
		xfer_collect(x, data, n);
		return total;
	}
	if (u->is_http && x->code >= 300 && x->code < 400)
		return n; /* body of a redirect */
	if (u->grace && u->grace_head >= GRACE_HEAD) {
		x->held = true; /* grace_over() lets it go on */
		return CURL_WRITEFUNC_PAUSE;
	}
	if (fill_yields(x, n))
		return CURL_WRITEFUNC_PAUSE; /* delivered again, skip included */
	size_t k = 0;
	if (x->skip) {
		k = x->skip < n ? (size_t)x->skip : n;
		data += k;
		n -= k;
	}
	if (n == 0) {
		x->skip -= k;
		return total;
	}
	/* Ahead of every reader: only as far as the budget allows. */
	size_t taken;
	int r = fill_take(x, data, n, u->evictable && !u->ondemand ? STREAM_AHEAD : 0, &taken);
	if (r == -ENOBUFS) {
		/* No room: curl keeps these bytes and delivers them again
		 * (skip included) once resumed; what was stored of them is
		 * skipped then too. */
		x->skip += taken;
		x->paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	x->skip -= k;
	if (r < 0) {
		store_refused(u, r);
		return 0;
	}
	if (u->grace)
		u->grace_head += n; /* the head: stored before the fill holds */
	u->backoff_ms = 0;          /* progress: the next failure starts a fresh backoff */
	url_update_rate(u, false);
	if (!u->ondemand && !u->no_ranges) {
		u->jump = jump_target(u);
		if (u->jump) {
			/* What is gathered is good (kept if there is room). */
			if (fill_flush(x) < 0)
				url_fill_discard(u);
			return 0; /* url_fill_done() goes on there */
		}
	}
	return total;
}

/* ---- requests ------------------------------------------------------- */

/* The Range of the next request: fill=ondemand's head, or a resume. */
static void ask_range(struct url_src *u)
{
	struct xfer *x = &u->fill;
	char range[64];
	if (u->reval) {
		/* The persistent cache's copy: from its first missing byte, if
		 * it is still the version with this validator. */
		char ir[600];
		const char *v = u->reval_etag[0] ? u->reval_etag : u->reval_lm;
		if (u->ondemand)
			snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, x->pos,
			         u->head_end - 1);
		else
			snprintf(range, sizeof(range), "%" PRIu64 "-", x->pos);
		curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
		if (snprintf(ir, sizeof(ir), "If-Range: %s", v) < (int)sizeof(ir)) {
			struct curl_slist *l = curl_slist_append(x->headers, ir);
			if (l)
				x->headers = l;
		}
		return;
	}
	if (u->ondemand && !u->ready) {
		u->head_end = ONDEMAND_FIRST;
		snprintf(range, sizeof(range), "0-%u", ONDEMAND_FIRST - 1);
		curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
	}
	if (!x->range_asked)
		return;
	snprintf(range, sizeof(range), "%" PRIu64 "-", x->pos);
	if (u->ondemand && u->head_end > x->pos)
		snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, x->pos, u->head_end - 1);
	if (u->is_http) {
		curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
		xfer_if_range(x);
	} else {
		curl_easy_setopt(x->easy, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)x->pos);
	}
}

void url_fill_start(struct url_src *u)
{
	assert(ioloop_in_loop(u->loop));
	struct xfer *x = &u->fill;
	assert(!x->easy); /* one request of the fill at a time */
	x->failure = 0;
	x->retry_now = false;
	x->retry_after_ms = -1;
	x->got_headers = false;
	x->code = 0;
	x->skip = 0;
	x->range_asked = x->pos > 0 || u->reval;
	if (xfer_open(x, fill_write_cb) < 0) {
		stream_fail(u->s, ENOMEM, "cannot create a transfer");
		url_done(u);
		return;
	}
	ask_range(u);
	if (log_get_level() >= LOG_LVL_DEBUG)
		log_debug("%s: GET from byte %" PRIu64, stream_name(u->s), x->pos);
	CURLMcode mc = xfer_send(x);
	if (mc != CURLM_OK) {
		stream_fail(u->s, EIO, "curl: %s", curl_multi_strerror(mc));
		url_done(u);
	}
}

void url_fill_stop(struct url_src *u)
{
	url_fill_discard(u); /* an abandoned request's bytes; the next asks again */
	unyield(&u->fill);
	xfer_close(&u->fill);
	u->fill.paused = false; /* of the request just closed */
	u->fill.held = false;   /* a grace stays: it holds the next request */
}

void url_retry_fired(struct ioloop_timer *t)
{
	struct url_src *u = t->data;
	assert(ioloop_in_loop(u->loop));
	if (u->active && !u->cancelled)
		url_fill_start(u);
}

/* Schedule another request from fill.pos, or fail if out of retries. */
static void retry(struct url_src *u, const char *why, int64_t after_ms)
{
	uint64_t now = ioloop_now_ms();
	if (u->retries == 0 || u->first_retry_ms == 0)
		u->first_retry_ms = now;
	uint64_t spent = now - u->first_retry_ms;
	uint64_t limit = (uint64_t)(u->opts.retry_time * 1000);
	u->backoff_ms = u->backoff_ms ? u->backoff_ms * 2 : BACKOFF_FIRST_MS;
	if (u->backoff_ms > BACKOFF_MAX_MS)
		u->backoff_ms = BACKOFF_MAX_MS;
	uint64_t delay = after_ms >= 0 ? (uint64_t)after_ms : u->backoff_ms;
	if (u->retries >= u->opts.retries || spent + delay > limit) {
		stream_fail(u->s, EIO, "%s (gave up after %d retr%s)", why, u->retries,
		            u->retries == 1 ? "y" : "ies");
		url_done(u);
		return;
	}
	u->retries++;
	stream_set_attr(u->s, "retries", "%d", u->retries);
	log_warn("%s: %s at byte %" PRIu64 "; retry %d of %d in %" PRIu64 " ms", stream_name(u->s),
	         why, u->fill.pos, u->retries, u->opts.retries, delay);
	url_fill_stop(u);
	ioloop_timer_arm(u->loop, &u->retry_timer, delay);
}

/* Fail the stream with @err and the message; the source is done. */
static void fill_fail(struct url_src *u, int err, const char *msg)
{
	stream_fail(u->s, err, "%s", msg);
	url_done(u);
}

static bool redirect_allowed(const char *target)
{
	return !strncasecmp(target, "http://", 7) || !strncasecmp(target, "https://", 8) ||
	       !strncasecmp(target, "ftp://", 6) || !strncasecmp(target, "ftps://", 7);
}

/* Follow a 3xx. Returns true if a new request was sent or the stream
 * failed; false if this was not a redirect. */
static bool follow_redirect(struct url_src *u)
{
	struct xfer *x = &u->fill;
	char msg[128];
	if (!u->is_http || x->code < 300 || x->code >= 400)
		return false;
	char *target = NULL;
	curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &target);
	if (!target) {
		/* S3's 301 for a bucket asked for at another region's
		 * endpoint has no Location, but names the region. */
		char region[64];
		if (xfer_bucket_region(x, region, sizeof(region)))
			snprintf(msg, sizeof(msg),
			         "HTTP %ld without a Location (the bucket is in %s)", x->code,
			         region);
		else
			snprintf(msg, sizeof(msg), "HTTP %ld without a Location", x->code);
		fill_fail(u, EIO, msg);
	} else if (++u->redirects > u->opts.max_redirs) {
		snprintf(msg, sizeof(msg), "more than %d redirects", u->opts.max_redirs);
		fill_fail(u, EIO, msg);
	} else if (!redirect_allowed(target)) {
		snprintf(msg, sizeof(msg), "redirect to a refused protocol: %.64s", target);
		fill_fail(u, EIO, msg);
	} else {
		char *next = strdup(target);
		if (!next) {
			fill_fail(u, ENOMEM, "out of memory");
			return true;
		}
		/* Another scheme is another origin too: https -> http on the
		 * same host and port would send the credentials in clear. */
		if (!source_url_same_origin(u->cur_url, target))
			u->send_auth = u->send_auth && u->opts.location_trusted;
		free(u->cur_url);
		u->cur_url = next;
		char *shown = source_url_redact(next);
		stream_set_attr(u->s, "url", "%s", shown ? shown : "");
		log_debug("%s: redirected (%ld) to %s", stream_name(u->s), x->code, shown);
		free(shown);
		url_fill_stop(u);
		url_fill_start(u);
	}
	return true;
}

/* ---- the end of a request ------------------------------------------- */

/* The write callback stopped at bytes that range fetches brought or are
 * bringing: go on after them (not a retry). If a range fetch gives up,
 * url_range_done() brings the fill back. */
static void fill_jump(struct url_src *u)
{
	u->fill.pos = u->jump;
	u->jump = 0;
	url_fill_stop(u);
	if (!url_all_present(u) && (u->length < 0 || u->fill.pos < (uint64_t)u->length))
		url_fill_start(u);
}

/* The request ended well: follow a redirect, resume a body cut short, or
 * the stream (fill=all) or its head (fill=ondemand) is in. */
static void fill_complete(struct url_src *u)
{
	if (follow_redirect(u))
		return;
	uint64_t want = u->length >= 0 ? (uint64_t)u->length : 0;
	if (u->ondemand && u->head_end && u->head_end < want)
		want = u->head_end;
	if (u->length >= 0 && u->fill.pos < want) {
		retry(u, "the body ended early", -1);
		return;
	}
	if (u->ondemand) {
		/* The head is in; the rest comes as readers ask. */
		url_fill_stop(u);
		url_all_present(u);
		return;
	}
	uint64_t fr = stream_frontier(u->s);
	if (u->length >= 0 && fr < (uint64_t)u->length) {
		/* The fill jumped over bytes range fetches brought, and some
		 * were evicted before the frontier got there. */
		url_fill_stop(u);
		u->fill.pos = fr;
		url_fill_start(u);
		return;
	}
	u->complete = true;
	stream_end(u->s);
	url_done(u);
}

static bool connection_error(CURLcode rc)
{
	return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
	       rc == CURLE_COULDNT_RESOLVE_PROXY;
}

static bool tls_error(CURLcode rc)
{
	return rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION ||
	       rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_CIPHER ||
	       rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_ISSUER_ERROR ||
	       rc == CURLE_SSL_CRL_BADFILE || rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH;
}

/* Errors that another try would only repeat. */
static bool final_error(CURLcode rc)
{
	return rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY ||
	       rc == CURLE_REMOTE_FILE_NOT_FOUND || rc == CURLE_REMOTE_ACCESS_DENIED ||
	       rc == CURLE_LOGIN_DENIED || rc == CURLE_UNSUPPORTED_PROTOCOL ||
	       rc == CURLE_URL_MALFORMAT || rc == CURLE_TOO_MANY_REDIRECTS;
}

/* curl gave up on the request: fail the stream, or resume where we are. */
static void fill_error(struct url_src *u, CURLcode rc)
{
	struct xfer *x = &u->fill;
	const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
	char why[CURL_ERROR_SIZE + 32];
	if (tls_error(rc)) {
		snprintf(why, sizeof(why), "TLS: %s", detail);
		fill_fail(u, EIO, why);
	} else if (final_error(rc) || (connection_error(rc) && x->pos == 0 && u->retries == 0)) {
		fill_fail(u, EIO, detail);
	} else {
		/* Dropped, stalled, cut short: resume where we are. */
		snprintf(why, sizeof(why), "%s",
		         rc == CURLE_OPERATION_TIMEDOUT ? "stalled" : detail);
		retry(u, why, -1);
	}
}

void url_fill_done(struct url_src *u, CURLcode rc)
{
	struct xfer *x = &u->fill;
	if (x->clen && !u->cancelled && !u->stopped && !u->restart) {
		/* Every byte received is stored before the end is handled. */
		int r = fill_flush(x);
		if (r == -ENOBUFS) {
			x->done_wait = true; /* url_fill_flush_resume() goes on */
			x->done_rc = rc;
			return;
		}
		if (r < 0)
			store_refused(u, r);
	}
	if (u->cancelled || u->stopped) {
		url_done(u);
	} else if (u->jump) {
		fill_jump(u);
	} else if (u->restart) {
		/* The cached copy was discarded: a first request, not a retry. */
		u->restart = false;
		x->pos = 0;
		u->head_end = 0;
		url_fill_stop(u);
		url_fill_start(u);
	} else {
		if (rc == CURLE_OK && !x->got_headers)
			check_response(u); /* an empty body: no write callback ran */
		if (x->failure) {
			xfer_explain(x);
			fill_fail(u, x->failure, x->failmsg);
		} else if (x->retry_now) {
			char why[sizeof(x->failmsg)];
			x->retry_now = false;
			snprintf(why, sizeof(why), "%s", x->failmsg);
			retry(u, why, x->retry_after_ms);
		} else if (rc == CURLE_OK) {
			fill_complete(u);
		} else {
			fill_error(u, rc);
		}
	}
}
