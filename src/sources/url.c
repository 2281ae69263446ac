/*
 * url.c - http(s)/ftp(s) URLs through libcurl: the source itself.
 *
 * A URL stream is one or more requests for the same resource, all driven
 * by the one I/O thread through one curl multi handle (url_multi.c):
 *
 *  - the sequential fill (url_transfer.c) downloads the resource from
 *    byte 0 to the end, resuming after drops, stalls and retryable
 *    statuses, and following redirects itself;
 *  - range fetches (url_fetch.c) bring what readers ask for ahead of the
 *    fill (fill=all), or everything but the first request's head
 *    (fill=ondemand);
 *  - every response, to either, is checked (url_xfer.c) to be the part
 *    asked for of the same version of the resource, of the announced
 *    length: two versions of a resource are never mixed, and a wrong
 *    response fails the stream at that byte with a message saying what
 *    changed.
 *
 * This file starts and cancels the source, and ends it: url_done() is the
 * one place a URL source lets go of its stream (source_drop()), whichever
 * request, check or cancel ended it.
 */
#include "url.h"

#include "sources.h"
#include "streamfs/persist.h"
#include "streamfs/store.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RATE_UPDATE_MS 1000

/* ---- the end of the source ------------------------------------------ */

void url_update_rate(struct url_src *u, bool force)
{
	uint64_t now = ioloop_now_ms();
	if (!force && now - u->rate_ms < RATE_UPDATE_MS)
		return;
	uint64_t ms = now - u->start_ms;
	uint64_t rate = ms ? u->rate_bytes * 1000 / ms : 0;
	stream_set_attr(u->s, "rate", "%" PRIu64, rate);
	u->rate_ms = now;
	/* fill=all: a read further ahead than half a second of download is
	 * worth a range request of its own. */
	uint64_t near = rate * NEAR_TIME_MS / 1000;
	u->near = near > NEAR_MIN ? near : NEAR_MIN;
	if (!u->ondemand && u->is_http && !u->no_ranges)
		u->near = stream_set_fetch_distance(u->s, u->near); /* a budget bounds it */
}

void url_done(struct url_src *u)
{
	assert(ioloop_in_loop(u->loop));
	if (!u->active)
		return;
	u->active = false;
	if (u->grace) {
		u->grace = false;
		stream_release_fill(u->s);
	}
	url_fill_stop(u);
	url_fetch_stop(u);
	ioloop_timer_disarm(u->loop, &u->retry_timer);
	ioloop_timer_disarm(u->loop, &u->grace_timer);
	if (!u->cancelled)
		url_update_rate(u, true);
	source_drop(u->s);
}

bool url_all_present(struct url_src *u)
{
	/* The frontier, not what is present: bytes may be evicted by now. */
	if (u->length < 0 || stream_frontier(u->s) < (uint64_t)u->length)
		return false;
	u->complete = true;
	stream_end(u->s);
	url_done(u);
	/* Range transfers of evicted bytes stopped with the fill: readers
	 * parked on such bytes ask again (this wakes the source). */
	if (u->evictable)
		stream_reask(u->s);
	return true;
}

/* A request finished (url_multi.c's done hook): the fill's or a range's. */
static void xfer_finished(CURL *easy, CURLcode rc)
{
	struct xfer *x = NULL;
	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
	if (!x || x->easy != easy)
		return;
	if (x->is_range)
		url_range_done(x, rc);
	else
		url_fill_done(x->u, rc);
}

/* ---- the source's operations ---------------------------------------- */

static void url_begin(void *arg)
{
	struct url_src *u = arg;
	assert(ioloop_in_loop(u->loop));
	u->active = true; /* from here on url_done() owes the source_drop() */
	int r = url_multi_setup(u->loop, xfer_finished, url_flush_all);
	if (r < 0) {
		stream_fail(u->s, -r, "cannot set up libcurl");
		url_done(u);
		return;
	}
	if (u->opts.fail_msg) {
		/* Known before any request (an S3 file without credentials):
		 * the file is there, its open says why it cannot be read. */
		stream_fail(u->s, EIO, "%s", u->opts.fail_msg);
		url_done(u);
		return;
	}
	u->start_ms = ioloop_now_ms();
	stream_set_attr(u->s, "retries", "0");
	u->ondemand = u->is_http && u->opts.ondemand;
	u->near = NEAR_MIN;
	stream_set_fetch_distance(u->s, !u->is_http ? UINT64_MAX : u->ondemand ? 0 : NEAR_MIN);
	uint64_t resume;
	if (u->opts.persist && u->is_http &&
	    persist_cached(u->opts.persist, u->reval_etag, sizeof(u->reval_etag), u->reval_lm,
	                   sizeof(u->reval_lm), &u->reval_length, &resume)) {
		/* A copy from an earlier mount: the first request asks for its
		 * first missing byte with If-Range, and its answer says whether
		 * the copy is still the resource (url_transfer.c). */
		u->reval = true;
		u->fill.pos = resume;
		if (u->ondemand) {
			uint64_t head = (uint64_t)u->reval_length < ONDEMAND_FIRST
			                    ? (uint64_t)u->reval_length
			                    : ONDEMAND_FIRST;
			u->head_end = resume + 1 > head ? resume + 1 : head;
		}
	}
	url_fill_start(u);
}

static void url_cancel_in_loop(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	assert(ioloop_in_loop(u->loop));
	bool was = u->active;
	u->cancelled = true; /* a complete stream: no refetch from now on */
	if (was)
		url_done(u);
	stream_unref(s); /* the ref of this call */
}

/* Room in the store again: go on with the transfers that waited for it.
 * A transfer may pause again at once (from inside curl_easy_pause). */
static void url_resume_in_loop(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	assert(ioloop_in_loop(u->loop));
	if (u->active && !u->cancelled) {
		url_fill_flush_resume(u);
		url_fetch_resume(u);
	}
	stream_unref(s); /* the ref of this call */
}

static void url_resume(struct stream *s, void *src)
{
	struct url_src *u = src;
	source_call_in_loop(s, u->loop, url_resume_in_loop, u);
}

/* A reader waits for bytes only the fill brings: its grace is over. */
static void url_fill_wanted_in_loop(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	assert(ioloop_in_loop(u->loop));
	if (u->active)
		url_fill_wanted_now(u);
	stream_unref(s); /* the ref of this call */
}

static void url_fill_wanted(struct stream *s, void *src)
{
	struct url_src *u = src;
	source_call_in_loop(s, u->loop, url_fill_wanted_in_loop, u);
}

static int url_start(struct stream *s, void *src)
{
	struct url_src *u = src;
	return source_start_in_loop(s, u->loop, url_begin, u);
}

static void url_cancel(struct stream *s, void *src)
{
	struct url_src *u = src;
	/* If the loop is gone, nothing runs any more: nothing to stop. */
	source_call_in_loop(s, u->loop, url_cancel_in_loop, u);
}

static void url_destroy(void *src)
{
	struct url_src *u = src;
	assert(!u->fill.cqueued && !u->fill.yielded); /* url_done() dropped them */
	free(u->fill.cbuf);
	free(u->url);
	free(u->cur_url);
	free(u->etag);
	free(u->last_modified);
	source_url_opts_free(&u->opts);
	free(u);
}

static const struct stream_source_ops url_ops = {
    .kind = "url",
    .start = url_start,
    .cancel = url_cancel,
    .destroy = url_destroy,
    .fetch = url_fetch,
    .resume = url_resume,
    .fill_wanted = url_fill_wanted,
};

struct stream *source_url_new(struct ioloop *loop, const char *name, const char *url,
                              const struct url_opts *opts, struct store *store)
{
	struct url_src *u = calloc(1, sizeof(*u));
	if (!u || !(u->url = strdup(url)) || !(u->cur_url = strdup(url)) ||
	    source_url_opts_copy(&u->opts, opts) < 0) {
		if (u) {
			free(u->url);
			free(u->cur_url);
		}
		free(u);
		store_close(store);
		errno = ENOMEM;
		return NULL;
	}
	u->loop = loop;
	u->length = -1;
	u->send_auth = true;
	u->is_http = strncasecmp(url, "http", 4) == 0;
	u->retry_timer.cb = url_retry_fired;
	u->retry_timer.data = u;
	u->grace_timer.cb = url_grace_fired;
	u->grace_timer.data = u;
	u->fill.u = u;
	LIST_INIT(&u->ranges);
	TAILQ_INIT(&u->queue);
	/* On failure stream_new() has destroyed u already. */
	struct stream *s = stream_new(name, store, &url_ops, u);
	if (!s)
		return NULL;
	u->s = s;
	char *shown = source_url_redact(url);
	if (shown)
		stream_set_attr(s, "url", "%s", shown);
	free(shown);
	if (u->opts.proxy && (shown = source_url_redact(u->opts.proxy))) {
		stream_set_attr(s, "proxy", "%s", shown);
		free(shown);
	}
	return s;
}

/* ---- options -------------------------------------------------------- */

void source_url_opts_free(struct url_opts *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->nheaders; i++)
		free(o->headers[i]);
	free(o->headers);
	if (o->userpwd) /* a password, or an AWS secret key */
		explicit_bzero(o->userpwd, strlen(o->userpwd));
	free(o->userpwd);
	free(o->netrc_file);
	free(o->proxy);
	free(o->noproxy);
	free(o->aws_sigv4);
	free(o->fail_msg);
	memset(o, 0, sizeof(*o));
}

/* A copy of @s (NULL stays NULL) in *@out. False without memory. */
static bool dup_or_null(const char *s, char **out)
{
	*out = s ? strdup(s) : NULL;
	return !s || *out;
}

int source_url_opts_copy(struct url_opts *dst, const struct url_opts *src)
{
	struct url_opts o = *src;
	o.headers = NULL;
	o.nheaders = 0;
	o.userpwd = o.netrc_file = o.proxy = o.noproxy = o.aws_sigv4 = o.fail_msg = NULL;
	if (src->nheaders && !(o.headers = calloc(src->nheaders, sizeof(*o.headers))))
		goto nomem;
	for (; o.nheaders < src->nheaders; o.nheaders++)
		if (!(o.headers[o.nheaders] = strdup(src->headers[o.nheaders])))
			goto nomem;
	if (!dup_or_null(src->userpwd, &o.userpwd) ||
	    !dup_or_null(src->netrc_file, &o.netrc_file) || !dup_or_null(src->proxy, &o.proxy) ||
	    !dup_or_null(src->noproxy, &o.noproxy) || !dup_or_null(src->aws_sigv4, &o.aws_sigv4) ||
	    !dup_or_null(src->fail_msg, &o.fail_msg))
		goto nomem;
	*dst = o;
	return 0;
nomem:
	source_url_opts_free(&o);
	memset(dst, 0, sizeof(*dst));
	errno = ENOMEM;
	return -1;
}

/* ---- URLs ----------------------------------------------------------- */

char *source_url_redact(const char *url)
{
	CURLU *h = curl_url();
	char *out = NULL;
	if (h && curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
		curl_url_set(h, CURLUPART_USER, NULL, 0);
		curl_url_set(h, CURLUPART_PASSWORD, NULL, 0);
		char *s = NULL;
		if (curl_url_get(h, CURLUPART_URL, &s, 0) == CURLUE_OK) {
			out = strdup(s);
			curl_free(s);
		}
	}
	curl_url_cleanup(h);
	return out ? out : strdup("(unparsable URL)");
}

/* "scheme://host:port", lower-case scheme, the scheme's port if none is
 * given; NULL if @url does not parse. */
static char *origin_of(const char *url)
{
	CURLU *h = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
	if (h && curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
	    curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
		curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
		if (asprintf(&out, "%s://%s:%s", scheme, host, port ? port : "") < 0)
			out = NULL;
	}
	curl_free(port);
	curl_free(host);
	curl_free(scheme);
	curl_url_cleanup(h);
	return out;
}

bool source_url_same_origin(const char *a, const char *b)
{
	char *oa = origin_of(a), *ob = origin_of(b);
	bool same = oa && ob && strcasecmp(oa, ob) == 0;
	free(oa);
	free(ob);
	return same;
}
