/*
 * url.h - the parts of the URL source, private to src/sources:
 *
 *   url.c           the source itself: start, cancel, the end of it all
 *   url_multi.c     the one curl multi handle, driven by the I/O loop
 *   url_xfer.c      one request: its easy handle, the options every
 *                   request shares, and what its response says
 *   url_transfer.c  the sequential fill: retries, redirects, its checks
 *   url_fetch.c     range fetches for readers ahead of the fill
 *
 * url.c says what a URL stream does; the rest say how. Everything here
 * runs in the loop thread, unless a function says otherwise: no lock
 * guards any of it.
 */
#ifndef STREAMFS_URL_H
#define STREAMFS_URL_H

#include "streamfs/ioloop.h"
#include "streamfs/source.h"
#include "streamfs/stream.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#define COALESCE (128u << 10)       /* bytes stored at once (url_transfer.c, "coalescing") */
#define MAX_RANGES 4                /* range transfers per stream at once */
#define RANGE_TRIES 3               /* tries of one range before it goes to the fill */
#define ONDEMAND_FIRST (256u << 10) /* fill=ondemand: the first request's bytes */
#define SKIP_MIN (1u << 20)         /* fill=all: jump over present runs this long */
#define NEAR_MIN (256ull << 10)     /* fill=all: fetch only this far past the fill... */
#define NEAR_TIME_MS 500            /* ...or half a second of download, if more */

struct url_src;

/*
 * One request and its response: the sequential fill (url_src.fill, one
 * request after another, each resuming where the last stopped) or a range
 * fetch for a reader (allocated, in url_src.ranges). The fields marked
 * "fill" or "range" mean something for that kind only.
 */
struct xfer {
	struct url_src *u;
	bool is_range;
	CURL *easy;    /* NULL while no request runs */
	bool in_multi; /* easy was added to the multi handle */
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];

	/* what was asked */
	uint64_t from;    /* range: the first byte asked for */
	uint64_t pos;     /* the next byte of the resource expected */
	uint64_t end;     /* range: bytes are wanted up to here (exclusive) */
	bool range_asked; /* fill: this request asked for bytes from pos */
	int tries;        /* range: earlier tries of this range */

	/* what came back */
	bool got_headers; /* the response's headers were checked */
	long code;
	int failure; /* the stream fails: positive errno, and failmsg says why */
	char failmsg[256];
	uint64_t skip;  /* body bytes to drop: a 200 answering the fill's range request, or bytes
	                   stored before a pause that curl delivers again */
	bool retry_now; /* fill: a retryable status... */
	int64_t retry_after_ms; /* ...to try again after this long (-1: the backoff) */
	bool norange;           /* range: the server sent the whole body instead */
	bool past_end;          /* range: a 416, nothing at pos... */
	int64_t end_total;      /* ...and the total it gave, or -1 */
	bool unstorable;        /* range: the store refused its bytes (EFBIG) */
	bool paused;            /* waits for room in the store (CURL_WRITEFUNC_PAUSE) */
	bool collect;           /* an error response: its body goes to errbody */
	size_t errbody_len;
	char errbody[1024]; /* the start of an error body (an S3 <Error> says why) */

	LIST_ENTRY(xfer) link; /* range: in url_src.ranges */

	/* body bytes taken from curl and not yet stored, which belong at pos
	 * (url_transfer.c, "coalescing"; ranges: url_fetch.c) */
	char *cbuf;
	size_t clen;
	unsigned cflags;
	bool cqueued;           /* on the list flushed after each curl round */
	LIST_ENTRY(xfer) clink; /* that list */
	bool done_wait;         /* the request ended with bytes still here... */
	CURLcode done_rc;       /* ...and this result, handled once stored */

	/* fill: sharing the loop (url_transfer.c) */
	uint64_t round;         /* the curl round round_bytes counts in */
	size_t round_bytes;     /* bytes taken in it */
	bool yielded;           /* paused until the loop has run the rest */
	LIST_ENTRY(xfer) ylink; /* on the list of those */
	bool held;              /* fill: paused by its grace */
};

/* A range a reader waits for, queued until a range transfer is free. */
struct fetch_req {
	TAILQ_ENTRY(fetch_req) link;
	struct url_src *u;
	uint64_t off, end;
	int tries;
};

struct url_src {
	struct ioloop *loop;
	struct stream *s;
	char *url;     /* as given */
	char *cur_url; /* after redirects: where the next request goes */
	struct url_opts opts;

	/* loop thread only (active is set in url_begin(), the first call) */
	bool active;    /* started, and not done: holds the stream (source_take) */
	bool cancelled; /* the stream was cancelled */
	bool stopped;   /* the stream stopped taking bytes (cancelled, failed) */
	bool is_http;
	bool send_auth; /* headers/credentials still go to cur_url's host */
	int redirects;

	/* the resource, as the first response described it */
	bool ready;     /* the first response was checked: validators known */
	int64_t length; /* -1 if unknown */
	char *etag;     /* strong validator, or NULL */
	char *last_modified;
	bool no_ranges; /* the server ignored a range request once */
	bool evictable; /* told the stream its bytes may be evicted */
	/* the persistent cache (opts.persist): a copy to revalidate */
	bool reval;           /* the next first response answers its If-Range */
	bool restart;         /* start the fill again from byte 0, not a retry */
	bool adopt;           /* the copy is the resource's: adopt it once the
	                       * length is set (learn_resource()) */
	char reval_etag[512]; /* its validators ("" if none)... */
	char reval_lm[256];
	int64_t reval_length; /* ...and its length */
	bool complete;        /* the stream is complete: only refetches of evicted bytes run */

	/* the sequential fill (url_transfer.c) */
	struct xfer fill;  /* fill.easy: a request runs; fill.pos: the next byte */
	uint64_t head_end; /* ondemand: the first request asks for [0, head_end) */
	uint64_t jump;     /* fill=all: continue the fill here */
	int retries;
	uint64_t first_retry_ms;
	uint64_t backoff_ms;
	struct ioloop_timer retry_timer;
	uint64_t start_ms, rate_ms, rate_bytes;

	/* random access (url_fetch.c) */
	bool ondemand;            /* fill=ondemand, and the server takes ranges */
	LIST_HEAD(, xfer) ranges; /* running range transfers */
	unsigned nranges;
	unsigned npaused;              /* of them, waiting for room in the store */
	TAILQ_HEAD(, fetch_req) queue; /* ranges waiting for a transfer, FIFO */
	bool pump_queued;              /* a call to start queued ranges is pending */
	uint64_t near;                 /* fill=all: reads nearer than this wait for the fill */
	uint64_t seen_end;             /* the end of the furthest bytes any response brought */

	/* a fresh fill's grace (url_transfer.c) */
	bool grace;                      /* the fill holds until a reader wants its bytes... */
	size_t grace_head;               /* ...after storing this many (GRACE_HEAD at most) */
	struct ioloop_timer grace_timer; /* ...or until this fires */
};

/* ---- url.c: the source ---------------------------------------------- */

/* The source is done (ended, failed or cancelled): stop every request and
 * let go of the stream. Idempotent. */
void url_done(struct url_src *u);

/* Is everything there (whichever requests brought it)? Then the stream
 * ends and the source is done, and true is returned. */
bool url_all_present(struct url_src *u);

/* Store the coalesced bytes of every request (after each curl round):
 * the fill's, and the ranges' (url_range_flush_round()); and those of
 * one fill; drop those of one fill (its request is abandoned).
 * url_transfer.c, which keeps the list of requests with bytes gathered:
 * url_gathered() puts one on it, url_ungathered() takes it off, and
 * url_gathered_stored() follows a store of all x->cbuf that stored
 * @stored bytes and returned @r: on -ENOBUFS the rest stays gathered,
 * else nothing does (returns @r). */
void url_flush_all(void);
void url_gathered(struct xfer *x);
void url_ungathered(struct xfer *x);
int url_gathered_stored(struct xfer *x, size_t stored, int r);
void url_fill_flush_resume(struct url_src *u);
void url_fill_discard(struct url_src *u);

/* Publish the download rate (at most once a second unless @force) and
 * the fetch distance that follows from it. */
void url_update_rate(struct url_src *u, bool force);

/* ---- url_multi.c: the multi handle and the loop ---------------------- */

/* Create the multi handle on first use, driven by @loop from then on;
 * @done(easy, result) is called, in the loop thread, for each request
 * that finishes, and @after() after every round of curl's work, before
 * those. Returns 0 or -ENOMEM. */
int url_multi_setup(struct ioloop *loop, void (*done)(CURL *easy, CURLcode rc),
                    void (*after)(void));

/* Which round of curl's work runs (a new number for each call into
 * curl), and whether other work waits behind it: other requests, or
 * events and calls of the loop (url_transfer.c, "sharing the loop"). */
uint64_t url_multi_round(void);
bool url_multi_others_wait(void);

/* Add a request to the multi handle, or take out one that was added
 * (NULL is fine). */
CURLMcode url_multi_add(CURL *easy);
void url_multi_remove(CURL *easy);

/* ---- url_xfer.c: one request ------------------------------------------ */

/*
 * A new easy handle for @x with every option its requests share (URL,
 * timeouts, TLS, and the file's headers and credentials while they may
 * go to this host), the body going to @write. Returns 0 or -ENOMEM.
 */
int xfer_open(struct xfer *x, curl_write_callback write);

/* Add an If-Range header with the validator, so a changed resource
 * answers 200 and is caught instead of mixed in. */
void xfer_if_range(struct xfer *x);

/* Send the request (headers set, into the multi handle). */
CURLMcode xfer_send(struct xfer *x);

/* Stop the request and free its handle and headers. Idempotent. */
void xfer_close(struct xfer *x);

/* Note that the stream must fail with @err: the callbacks cannot fail it
 * from inside curl, the transfer's end does. */
void xfer_fail(struct xfer *x, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Store @n body bytes at x->pos and move on by what was stored (in
 * @stored). Returns 0 (all stored) or the stream_write() error: -ENOBUFS
 * is no room for all of them (pause; a prefix may be stored, and only the
 * rest is to be offered again). @flags: STREAM_AHEAD for the fill of an
 * evictable stream. */
int xfer_store(struct xfer *x, const char *data, size_t n, unsigned flags, size_t *stored);

/* Keep the start of an error response's body (x->collect), up to
 * sizeof(x->errbody) bytes; the rest is dropped. */
void xfer_collect(struct xfer *x, const char *data, size_t n);

/* x->failmsg is "HTTP CODE": add the reason an S3-style error body gave
 * ("HTTP 403: SignatureDoesNotMatch"), if it gave one, and the bucket's
 * region if the response names it ("(the bucket is in eu-west-3)"). */
void xfer_explain(struct xfer *x);

/* The region S3 says the bucket is in (x-amz-bucket-region, checked to be
 * a region name), in @out. False if the response says none. */
bool xfer_bucket_region(struct xfer *x, char *out, size_t size);

/* ---- url_xfer.c: what a response says ----------------------------------- */

/* The value of response header @name, in @out. False if there is none. */
bool url_header(struct xfer *x, const char *name, char *out, size_t size);

/* The body's length (Content-Length, the FTP size), or -1. */
int64_t url_content_length(struct xfer *x);

/*
 * Retry-After @v: delay seconds or an HTTP date. Sets *ms to the wait and
 * returns 0; returns 1 if the server asks for more than @cap_ms (*ms =
 * @cap_ms), -1 if @v is neither form.
 */
int url_parse_retry_after(const char *v, uint64_t cap_ms, int64_t *ms);

/* The total in a 416's Content-Range, or -1. */
int64_t url_total_of_416(struct xfer *x);

/* Does the response carry the validator of the first response? If not,
 * x->failmsg says why. Responses of a resource without one always do. */
bool url_same_version(struct xfer *x);

/* Is @total (-1: not known) the resource's known length? If not,
 * x->failmsg says the resource changed. */
bool url_same_length(struct xfer *x, int64_t total);

/* A 416 at @at, inside a resource of known length: x->failmsg says what
 * changed (@total: what the 416 gave, or -1). */
void url_changed_416(struct xfer *x, int64_t total, uint64_t at);

/*
 * The one check of every 206, whichever request it answers: is it the
 * part asked for, bytes @from to @to at most (inclusive; UINT64_MAX: to
 * the end), with a body as long as its Content-Range says, of a resource
 * of the announced length (if known)? Returns true, or false with the
 * reason in x->failmsg. *total (if not NULL) gets the total, -1 for "*".
 */
bool url_check_206(struct xfer *x, uint64_t from, uint64_t to, int64_t *total);

/* ---- url_debug.c: libcurl's verbose output ---------------------------- */

/* At -vv (source_url_set_verbose()), route @x's libcurl verbose output
 * (headers and informational text, never body bytes) to the log,
 * redacted. */
void url_debug_setup(struct xfer *x);

/*
 * One line of libcurl's verbose output (@n bytes, no line end) made fit
 * for a log, in @out (@size > 0, always NUL-terminated, cut if need be):
 * the values of the Authorization, Proxy-Authorization, Cookie,
 * Set-Cookie and X-Amz-Security-Token headers become "[redacted]", and
 * so do the passwords of URLs and the X-Amz-Signature,
 * X-Amz-Credential and X-Amz-Security-Token query values of presigned
 * URLs. Returns @out.
 */
char *url_debug_redact(const char *line, size_t n, char *out, size_t size);

/* ---- url_transfer.c: the sequential fill ------------------------------- */

/* Send the next request of the fill, from fill.pos. On failure the
 * stream fails and the source is done. */
void url_fill_start(struct url_src *u);

/* Stop the fill's request, if one runs. */
void url_fill_stop(struct url_src *u);
/* A fresh fill's grace is over: a reader waits for its bytes, or its
 * timer fired (url_transfer.c). */
void url_fill_wanted_now(struct url_src *u);
void url_grace_fired(struct ioloop_timer *t);

/* The fill's request finished with @rc: go on, retry, end or fail. */
void url_fill_done(struct url_src *u, CURLcode rc);

/* The retry timer fired: the next request of the fill. */
void url_retry_fired(struct ioloop_timer *t);

/* ---- url_fetch.c: range fetches ----------------------------------------- */

/* The stream's fetch operation (stream_source_ops.fetch): any thread. */
void url_fetch(struct stream *s, void *src, uint64_t off, uint64_t len);

/* The first response is in: start the queued ranges, on the next turn
 * of the loop (not from inside a curl callback). */
void url_fetch_kick(struct url_src *u);

/* A range request finished with @rc. */
void url_range_done(struct xfer *x, CURLcode rc);

/* Stop every range request and drop the queue. */
void url_fetch_stop(struct url_src *u);

/* Room in the store again: go on with the range requests that paused. */
void url_fetch_resume(struct url_src *u);

/* The end of a curl round: store what range @x gathered (pausing it if
 * the store has no room). */
void url_range_flush_round(struct xfer *x);

#endif
