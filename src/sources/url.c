/*
 * source_url.c - http(s)/ftp(s) URLs through libcurl.
 *
 * Every transfer of every URL stream is driven by the one I/O thread,
 * through a single curl multi handle and its socket API: curl tells us
 * which sockets to watch (socket callback) and when to wake it (timer
 * callback); the ioloop calls curl_multi_socket_action() back. No thread
 * per transfer, no lock around curl: only the loop thread touches it.
 *
 * A stream is one or more transfers of the same resource:
 *  - The first GET learns the length (Content-Length, or the FTP size) and
 *    the validator (a strong ETag, else Last-Modified). The length is
 *    announced to the stream as soon as the headers are in, before any
 *    body byte, so stat shows it at once.
 *  - On a dropped connection, a stall (no byte for stall_timeout s), a
 *    body cut short, or a retryable status (5xx, 408, 429 with
 *    Retry-After), the next transfer asks for "Range: bytes=N-" with
 *    If-Range, after a backoff (1 s doubling to 30 s, or Retry-After), as
 *    long as the retry count and the total retry time allow.
 *  - Every 206, to whichever request, must be the part asked for (its
 *    Content-Range starts at N, ends within the range asked, and agrees
 *    with the body's length) of a resource of the announced length, and
 *    carry the same validator; a 200 to a range request means the server
 *    sent the whole body again: its first N bytes are skipped if the
 *    validator and the length still match. Otherwise the stream fails
 *    ("the server sent the wrong range", "the resource changed ...").
 *    Two versions of a resource are never mixed.
 *  - A Retry-After longer than the retry time fails the stream at once.
 *  - fill=ondemand when the server gives no total (a Content-Range total
 *    of "*"): a 416 right after the last byte seen is the end (see
 *    end_found()).
 *  - 4xx (but 408/429), DNS, TLS and connection errors on the first
 *    request fail the stream at byte 0 with a message saying which.
 *
 * Redirects are followed here, not by libcurl, so that headers and
 * credentials given for the file are dropped when a redirect leaves the
 * original scheme, host or port (unless location_trusted), and only http,
 * https, ftp and ftps targets are accepted.
 *
 * The body is stored as sent: no Accept-Encoding is sent and nothing is
 * decoded, so the file is exactly the bytes of the resource.
 *
 * The store budget: a resource that takes Range requests and carries a
 * validator is evictable (its bytes can be fetched again, and a changed
 * version is noticed). A write the budget has no room for pauses the
 * transfer (CURL_WRITEFUNC_PAUSE; curl keeps the bytes) until the stream
 * is resumed. The sequential fill of an evictable stream writes with
 * STREAM_AHEAD: it runs ahead of readers only as far as the budget
 * allows. Evicted bytes come back through range transfers, also after
 * the stream is complete: the source is then woken again for as long as
 * such transfers run ("refetching").
 */
#include "streamfs/source.h"

#include "log.h"
#include "streamfs/store.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 30000
#define RATE_UPDATE_MS 1000

/* The shared multi handle, loop thread only. */
struct url_multi {
	CURLM *multi;
	struct ioloop *loop;
	struct ioloop_timer timer;
	bool closing;
};
static struct url_multi g_multi;

struct sock_watch {
	struct ioloop_watch w;
	bool added;
};

/* First member of both kinds of transfer, so CURLINFO_PRIVATE says which. */
enum xfer_kind { X_MAIN, X_RANGE };

struct range_xfer;
struct fetch_req;

struct url_src {
	enum xfer_kind kind; /* X_MAIN: the sequential transfer's private data */
	struct ioloop *loop;
	struct stream *s;
	char *url;      /* as given */
	char *cur_url;  /* after redirects: where the next request goes */
	struct file_opts opts;

	/* loop thread only */
	CURL *easy;
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];
	bool active, cancelled;
	bool is_http;
	bool send_auth;    /* headers/credentials still go to cur_url's host */
	int redirects;
	uint64_t pos;      /* next byte of the resource we expect */
	uint64_t skip;     /* body bytes to drop (a 200 answering a range request) */
	int64_t length;    /* of the whole resource, -1 if unknown */
	bool range_asked;  /* the current request asked for bytes from pos */
	bool got_headers;  /* the current response's headers were checked */
	long code;         /* of the current response */
	char *etag;        /* strong validator, or NULL */
	char *last_modified;
	bool no_ranges;    /* the server ignored a range request once */
	int failure;       /* an error found in a callback: positive errno */
	char failmsg[256];
	bool retry_now;    /* the callback found the response retryable */
	int64_t retry_after_ms;
	int retries;
	uint64_t first_retry_ms;
	uint64_t backoff_ms;
	struct ioloop_timer retry_timer;
	uint64_t start_ms, rate_ms, rate_bytes;

	/* random access (loop thread only) */
	bool ondemand;       /* fill=ondemand, and the server takes ranges */
	bool ready;          /* the first response was checked: validators known */
	bool main_running;   /* the sequential (or first) transfer exists */
	uint64_t main_end;   /* ondemand: the first transfer asks for [0, main_end) */
	uint64_t jump;       /* fill=all: continue the sequential fill here */
	struct range_xfer *ranges; /* running range transfers */
	unsigned nranges;
	unsigned npaused;    /* of them, waiting for room in the store */
	struct fetch_req *queue; /* ranges waiting for a transfer, FIFO */
	bool pump_queued;
	bool stopped;        /* the stream stopped taking bytes (cancelled, failed) */
	uint64_t near;       /* fill=all: reads nearer than this wait for the fill */
	uint64_t seen_end;   /* the end of the furthest bytes any response brought */
	bool evictable;      /* told the stream its bytes may be evicted */
	bool complete;       /* the stream is complete: only refetches run */
	bool main_paused;    /* the sequential transfer waits for room */
};

/* A range fetched out of order for a reader. */
struct range_xfer {
	enum xfer_kind kind; /* X_RANGE */
	struct url_src *u;
	struct range_xfer *next;
	CURL *easy;
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];
	uint64_t from;     /* the first byte asked for */
	uint64_t pos, end; /* still wanted: [pos, end) */
	int tries;
	long code;
	bool got_headers, norange;
	bool past_end;     /* a 416: nothing at pos */
	int64_t end_total; /* ...and the total the 416 gave, or -1 */
	bool unstorable;   /* the store refused its bytes (EFBIG): past its limit */
	bool paused;       /* waits for room in the store */
	int failure;
	char failmsg[256];
};

struct fetch_req {
	struct fetch_req *next;
	struct url_src *u;
	uint64_t off, end;
	int tries;
};

#define MAX_RANGES 4                 /* range transfers per stream at once */
#define RANGE_TRIES 3
#define ONDEMAND_FIRST (256u << 10)  /* fill=ondemand: the first request's bytes */
#define SKIP_MIN (1u << 20)          /* fill=all: jump over present runs this long */
#define NEAR_MIN (256ull << 10)      /* fill=all: fetch only this far past the frontier... */
#define NEAR_TIME_MS 500             /* ...or half a second of download, if more */

static void multi_check(void);
static void begin_transfer(struct url_src *u);
static void range_done(struct range_xfer *x, CURLcode rc);
static struct curl_slist *setup_easy(struct url_src *u, CURL *e);
static struct curl_slist *add_if_range(struct url_src *u, struct curl_slist *headers);
static void pump_queue(struct url_src *u);
static void pump_call(void *arg);
static void multi_check(void);
static void refill_from(struct url_src *u, uint64_t pos);

/* ---- the multi handle and the ioloop ---------------------------------- */

static void sock_event(struct ioloop_watch *w, uint32_t events)
{
	int mask = 0;
	if (events & EPOLLIN)
		mask |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		mask |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		mask |= CURL_CSELECT_ERR;
	int running;
	curl_multi_socket_action(g_multi.multi, w->fd, mask, &running);
	multi_check();
}

static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct sock_watch *sw = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (sw) {
			if (sw->added && !g_multi.closing)
				ioloop_del(g_multi.loop, &sw->w);
			free(sw);
			curl_multi_assign(g_multi.multi, fd, NULL);
		}
		return 0;
	}
	uint32_t ev = 0;
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (!sw) {
		sw = calloc(1, sizeof(*sw));
		if (!sw)
			return -1;
		sw->w.fd = fd;
		sw->w.cb = sock_event;
		curl_multi_assign(g_multi.multi, fd, sw);
	}
	int r = sw->added ? ioloop_mod(g_multi.loop, &sw->w, ev) : ioloop_add(g_multi.loop, &sw->w, ev);
	if (r == 0)
		sw->added = true;
	else
		log_error("url: cannot watch socket %d: %s", fd, strerror(-r));
	return 0;
}

static void timer_fired(struct ioloop_timer *t)
{
	int running;
	curl_multi_socket_action(g_multi.multi, CURL_SOCKET_TIMEOUT, 0, &running);
	multi_check();
}

static int timer_cb(CURLM *multi, long ms, void *userp)
{
	if (ms < 0)
		ioloop_timer_disarm(g_multi.loop, &g_multi.timer);
	else
		ioloop_timer_arm(g_multi.loop, &g_multi.timer, (uint64_t)ms);
	return 0;
}

static int multi_setup(struct ioloop *loop)
{
	if (g_multi.multi)
		return 0;
	g_multi.multi = curl_multi_init();
	if (!g_multi.multi)
		return -ENOMEM;
	g_multi.loop = loop;
	g_multi.timer.cb = timer_fired;
	curl_multi_setopt(g_multi.multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(g_multi.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	return 0;
}

int source_url_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void source_url_global_cleanup(void)
{
	if (g_multi.multi) {
		g_multi.closing = true; /* the loop may be gone: only free */
		curl_multi_cleanup(g_multi.multi);
		g_multi.multi = NULL;
	}
	curl_global_cleanup();
}

/* ---- status ----------------------------------------------------------- */

/* The URL without user:password, for status and the log. */
char *source_url_redact(const char *url)
{
	CURLU *h = curl_url();
	char *out = NULL;
	if (h && curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
		curl_url_set(h, CURLUPART_USER, NULL, 0);
		curl_url_set(h, CURLUPART_PASSWORD, NULL, 0);
		char *u = NULL;
		if (curl_url_get(h, CURLUPART_URL, &u, 0) == CURLUE_OK) {
			out = strdup(u);
			curl_free(u);
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

static void update_rate(struct url_src *u, bool force)
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
		stream_set_fetch_distance(u->s, u->near);
}

/* ---- one transfer ----------------------------------------------------- */

static void fail_in_cb(struct url_src *u, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail_in_cb(struct url_src *u, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(u->failmsg, sizeof(u->failmsg), fmt, ap);
	va_end(ap);
	u->failure = err;
}

static bool header_value(CURL *easy, const char *name, char *out, size_t size)
{
	struct curl_header *h;
	if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return false;
	snprintf(out, size, "%s", h->value);
	return true;
}

static bool retryable_code(long code)
{
	return code == 408 || code == 429 || (code >= 500 && code <= 599);
}

/*
 * Retry-After @v: delay seconds or an HTTP date (RFC 9110 10.2.3). Sets
 * *ms to the wait and returns 0; returns 1 if the server asks for more
 * than @cap_ms (*ms = @cap_ms), -1 if @v is neither form. Any number of
 * digits is taken without overflow: a server can send anything.
 */
static int parse_retry_after(const char *v, uint64_t cap_ms, int64_t *ms)
{
	uint64_t cap_s = cap_ms / 1000, secs = 0;
	const char *p = v;
	if (*p >= '0' && *p <= '9') {
		for (; *p >= '0' && *p <= '9'; p++)
			if (secs <= cap_s) /* past the cap the value no longer matters */
				secs = secs * 10 + (uint64_t)(*p - '0');
		if (*p)
			return -1;
	} else {
		time_t t = curl_getdate(v, NULL), now = time(NULL);
		if (t < 0)
			return -1;
		secs = t > now ? (uint64_t)t - (uint64_t)now : 0;
	}
	if (secs > cap_s || secs * 1000 > cap_ms) {
		*ms = (int64_t)cap_ms;
		return 1;
	}
	*ms = (int64_t)(secs * 1000);
	return 0;
}

/* What a 206 says it holds: bytes [start, end] of total (-1: "*"). */
struct content_range {
	uint64_t start, end;
	int64_t total;
};

/* A decimal number below 2^63 at *p; moves *p past it. */
static bool parse_u63(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;
	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		unsigned d = (unsigned)(*s - '0');
		if (v > ((uint64_t)INT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*p = s;
	*out = v;
	return true;
}

/* "bytes A-B/TOTAL", TOTAL a number or "*" (RFC 9110 14.4). With
 * @unsatisfied, the form a 416 carries: a "*" for A-B and a number for
 * TOTAL (start and end are then 0). */
static bool parse_content_range(const char *v, bool unsatisfied, struct content_range *cr)
{
	uint64_t total;
	if (strncasecmp(v, "bytes", 5) != 0 || (v[5] != ' ' && v[5] != '\t'))
		return false;
	v += 6;
	while (*v == ' ' || *v == '\t')
		v++;
	cr->start = cr->end = 0;
	if (unsatisfied ? *v++ != '*'
			: !parse_u63(&v, &cr->start) || *v++ != '-' || !parse_u63(&v, &cr->end))
		return false;
	if (*v++ != '/')
		return false;
	if (*v == '*' && !unsatisfied) {
		cr->total = -1;
		v++;
	} else if (parse_u63(&v, &total)) {
		cr->total = (int64_t)total;
	} else {
		return false;
	}
	return *v == '\0';
}

/* The total in a 416's Content-Range, or -1. */
static int64_t total_of_416(CURL *easy)
{
	char v[256];
	struct content_range cr;
	if (header_value(easy, "Content-Range", v, sizeof(v)) && parse_content_range(v, true, &cr))
		return cr.total;
	return -1;
}

/* Does @easy's response carry the validator of the first response? If
 * not, says why in @msg. Responses of a resource without one always do. */
static bool same_version(const struct url_src *u, CURL *easy, char *msg, size_t len)
{
	char etag[512] = "", lm[256] = "";
	bool has_etag = header_value(easy, "ETag", etag, sizeof(etag));
	bool has_lm = header_value(easy, "Last-Modified", lm, sizeof(lm));
	bool same = u->etag ? has_etag && strcmp(etag, u->etag) == 0
		    : u->last_modified ? has_lm && strcmp(lm, u->last_modified) == 0
				       : true;
	if (!same)
		snprintf(msg, len, "the resource changed while it was read (%s %.80s, was %.80s)",
			 u->etag ? "ETag" : "Last-Modified", u->etag ? etag : lm,
			 u->etag ? u->etag : u->last_modified);
	return same;
}

/* A 416 at @at, inside a resource of @length bytes: nothing is there now. */
static void changed_416(int64_t total, uint64_t at, int64_t length, char *msg, size_t len)
{
	if (total >= 0)
		snprintf(msg, len, "the resource changed on the server (%" PRId64 " bytes, was %" PRId64
			 ")", total, length);
	else
		snprintf(msg, len, "the resource changed on the server (HTTP 416 at byte %" PRIu64
			 " of %" PRId64 ")", at, length);
}

/*
 * The one check of every 206, whichever request it answers: is it the
 * part asked for, bytes @from to @to at most (inclusive; UINT64_MAX: to
 * the end), with a body as long as its Content-Range says, of a resource
 * of @length bytes (-1: not known yet)? A server that sends another part
 * would have it stored at the wrong offset; a different total is a
 * changed resource even without a validator. Returns true, or false with
 * the reason in @msg. *total (if not NULL) gets the total, -1 for "*".
 */
static bool check_206(CURL *easy, uint64_t from, uint64_t to, int64_t length, int64_t *total,
		      char *msg, size_t len)
{
	char v[256] = "", asked[48];
	struct content_range cr;
	curl_off_t cl = -1;
	curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	bool has = header_value(easy, "Content-Range", v, sizeof(v));
	bool ok = has && parse_content_range(v, false, &cr) && cr.start == from &&
		  cr.end >= cr.start && cr.end <= to && (cr.total < 0 || cr.end < (uint64_t)cr.total);
	if (!ok || (cl >= 0 && (uint64_t)cl != cr.end - cr.start + 1)) {
		if (to == UINT64_MAX)
			snprintf(asked, sizeof(asked), "%" PRIu64 "-", from);
		else
			snprintf(asked, sizeof(asked), "%" PRIu64 "-%" PRIu64, from, to);
		if (!has)
			snprintf(msg, len, "the server sent the wrong range: no Content-Range for bytes %s",
				 asked);
		else if (!ok)
			snprintf(msg, len, "the server sent the wrong range: Content-Range '%.80s' for bytes %s",
				 v, asked);
		else
			snprintf(msg, len, "the server sent the wrong range: Content-Range '%.80s' with "
				 "Content-Length %" PRId64, v, (int64_t)cl);
		return false;
	}
	if (length >= 0 && cr.total >= 0 && cr.total != length) {
		snprintf(msg, len, "the resource changed on the server (%" PRId64 " bytes, was %" PRId64
			 ")", cr.total, length);
		return false;
	}
	if (total)
		*total = cr.total;
	return true;
}

/* The first response of the resource (2xx): learn its length and
 * validators. Returns false to abort the transfer (failure set). */
static bool learn_resource(struct url_src *u)
{
	char etag[512] = "", lm[256] = "";
	bool has_etag = header_value(u->easy, "ETag", etag, sizeof(etag));
	bool has_lm = header_value(u->easy, "Last-Modified", lm, sizeof(lm));
	if (has_etag && strncmp(etag, "W/", 2) == 0)
		has_etag = false; /* weak: not usable with If-Range */
	curl_off_t cl = -1;
	curl_easy_getinfo(u->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);

	if (u->code == 206) {
		/* fill=ondemand asked for the head, bytes 0-262143; a plain GET
		 * takes a 206 only if it starts at byte 0. The total is in
		 * Content-Range ("bytes 0-262143/52428800"; "*": unknown). */
		int64_t total;
		if (!check_206(u->easy, 0, u->ondemand ? ONDEMAND_FIRST - 1 : UINT64_MAX, -1, &total,
			       u->failmsg, sizeof(u->failmsg))) {
			u->failure = EIO;
			return false;
		}
		cl = total;
	} else if (u->ondemand) {
		/* A 200 to a range request: no ranges here, download it all. */
		u->ondemand = false;
		u->no_ranges = true;
		u->main_end = 0;
		stream_set_fetch_distance(u->s, UINT64_MAX);
		log_warn("%s: the server ignores Range requests; fill=ondemand falls back "
			 "to downloading everything", stream_name(u->s));
	}
	u->ready = true;
	if (u->queue && !u->pump_queued) {
		/* Not from inside a curl callback: on the next turn. */
		stream_ref(u->s);
		if (ioloop_call(u->loop, pump_call, u) == 0)
			u->pump_queued = true;
		else
			stream_unref(u->s);
	}
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
	if (cl >= 0 && u->length < 0) {
		u->length = cl;
		if (stream_set_length(u->s, (uint64_t)cl) < 0) {
			fail_in_cb(u, EIO, "the length changed to %" PRId64, (int64_t)cl);
			return false;
		}
	}
	/* Bytes that can be fetched again, and checked to be the same
	 * version, may be evicted from the store. */
	char ar[64] = "";
	bool ranges = u->code == 206 || (header_value(u->easy, "Accept-Ranges", ar, sizeof(ar)) &&
					 strcasecmp(ar, "bytes") == 0);
	if (ranges && !u->no_ranges && (u->etag || u->last_modified)) {
		u->evictable = true;
		stream_set_evictable(u->s, true);
	}
	return true;
}

/* A later response (a resumed or repeated request, 2xx): same version,
 * same length, the part asked for? Returns false with failure set if not. */
static bool check_again(struct url_src *u)
{
	curl_off_t cl = -1;
	curl_easy_getinfo(u->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	if (!same_version(u, u->easy, u->failmsg, sizeof(u->failmsg))) {
		u->failure = EIO;
		return false;
	}
	if (u->code == 206) {
		uint64_t to = u->ondemand && u->main_end > u->pos ? u->main_end - 1 : UINT64_MAX;
		if (!check_206(u->easy, u->pos, to, u->length, NULL, u->failmsg, sizeof(u->failmsg))) {
			u->failure = EIO;
			return false;
		}
		return true;
	}
	/* A 200: the whole body again. */
	if (u->range_asked && !u->no_ranges) {
		u->no_ranges = true;
		log_warn("%s: the server ignores Range requests; skipping %" PRIu64
			 " bytes of a full response",
			 stream_name(u->s), u->pos);
	}
	if (u->length >= 0 && cl >= 0 && cl != u->length) {
		fail_in_cb(u, EIO, "the resource changed on the server (%" PRId64 " bytes, was %" PRId64
			   ")", (int64_t)cl, u->length);
		return false;
	}
	u->skip = u->pos;
	return true;
}

/* A retryable status: when to try again. Returns false (retry or failure
 * set). */
static bool retry_later(struct url_src *u)
{
	char v[128];
	uint64_t budget = (uint64_t)(u->opts.retry_time * 1000);
	snprintf(u->failmsg, sizeof(u->failmsg), "HTTP %ld", u->code);
	u->retry_now = true;
	u->retry_after_ms = -1;
	if (header_value(u->easy, "Retry-After", v, sizeof(v)) &&
	    parse_retry_after(v, budget, &u->retry_after_ms) > 0) {
		/* Waiting that long would outlast the retries: give up now. */
		u->retry_now = false;
		fail_in_cb(u, EIO, "HTTP %ld with Retry-After: %.40s, longer than the retry time (%g s)",
			   u->code, v, u->opts.retry_time);
	}
	return false;
}

/*
 * The headers of the final response of this transfer are in: decide what
 * its body is. Returns false to abort the transfer (failure or retry set).
 */
static bool check_response(struct url_src *u)
{
	u->got_headers = true;
	curl_easy_getinfo(u->easy, CURLINFO_RESPONSE_CODE, &u->code);
	if (!u->is_http) {
		if (u->length < 0) {
			curl_off_t cl = -1;
			curl_easy_getinfo(u->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
			if (cl >= 0 && u->pos == 0) {
				u->length = cl;
				stream_set_length(u->s, (uint64_t)cl);
			}
		}
		return true;
	}
	stream_set_attr(u->s, "http_code", "%ld", u->code);
	if (u->code >= 300 && u->code < 400)
		return true; /* a redirect: followed when the transfer is done */
	if (u->code == 416 && u->ondemand && !u->ready) {
		/* An empty resource cannot serve bytes 0-N: ask for all of it. */
		u->ondemand = false;
		u->main_end = 0;
		u->retry_now = true;
		u->retry_after_ms = 0;
		snprintf(u->failmsg, sizeof(u->failmsg), "HTTP 416");
		return false;
	}
	if (u->code == 416 && u->ready && u->length >= 0 && u->pos < (uint64_t)u->length) {
		changed_416(total_of_416(u->easy), u->pos, u->length, u->failmsg,
			    sizeof(u->failmsg));
		u->failure = EIO;
		return false;
	}
	if (u->code >= 400) {
		if (retryable_code(u->code))
			return retry_later(u);
		fail_in_cb(u, EIO, "HTTP %ld", u->code);
		return false;
	}
	return u->ready ? check_again(u) : learn_resource(u);
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct url_src *u = userp;
	size_t n = size * nmemb;
	if (u->cancelled)
		return 0;
	if (!u->got_headers && !check_response(u))
		return 0;
	if (u->is_http && u->code >= 300 && u->code < 400)
		return n; /* body of a redirect */
	size_t total = n;
	size_t k = 0;
	if (u->skip) {
		k = u->skip < n ? (size_t)u->skip : n;
		data += k;
		n -= k;
	}
	if (n == 0) {
		u->skip -= k;
		return total;
	}
	/* Ahead of every reader: only as far as the budget allows. */
	int r = stream_write_flags(u->s, u->pos, data, n,
				   u->evictable && !u->ondemand ? STREAM_AHEAD : 0);
	if (r == -ENOBUFS) {
		/* No room: curl keeps these bytes (and delivers them again,
		 * skip included) once resumed. */
		u->main_paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	u->skip -= k;
	if (r < 0) {
		/* The store's limit (EFBIG) leaves the stream running, but the
		 * sequential fill cannot go past it: a failure at that byte. */
		if (r == -EFBIG)
			stream_fail(u->s, EFBIG, "store: %s", strerror(EFBIG));
		u->stopped = true; /* cancelled, or failed by the store: nothing to retry */
		return 0;
	}
	u->pos += n;
	if (u->pos > u->seen_end)
		u->seen_end = u->pos;
	u->rate_bytes += n;
	u->backoff_ms = 0; /* progress: the next failure starts a fresh backoff */
	update_rate(u, false);
	if (!u->ondemand && !u->no_ranges) {
		/* Range fetches got here first: jump over what they brought, and
		 * over what one of them is still bringing from there on. */
		uint64_t re = stream_run_end(u->s, u->pos);
		uint64_t to = re - u->pos >= SKIP_MIN ? re : 0;
		for (struct range_xfer *x = u->ranges; x; x = x->next)
			if (x->pos <= re && x->end > re && x->pos >= u->pos && x->end > to)
				to = x->end;
		if (to) {
			u->jump = to;
			return 0;
		}
	}
	return total;
}

static void end_transfer(struct url_src *u)
{
	u->main_running = false;
	if (u->easy) {
		curl_multi_remove_handle(g_multi.multi, u->easy);
		curl_easy_cleanup(u->easy);
		u->easy = NULL;
	}
	curl_slist_free_all(u->headers);
	u->headers = NULL;
}

static void source_done(struct url_src *u)
{
	if (!u->active)
		return;
	u->active = false;
	end_transfer(u);
	while (u->ranges) {
		struct range_xfer *x = u->ranges;
		u->ranges = x->next;
		curl_multi_remove_handle(g_multi.multi, x->easy);
		curl_easy_cleanup(x->easy);
		curl_slist_free_all(x->headers);
		free(x);
	}
	u->nranges = 0;
	u->npaused = 0;
	while (u->queue) {
		struct fetch_req *q = u->queue;
		u->queue = q->next;
		free(q);
	}
	ioloop_timer_disarm(u->loop, &u->retry_timer);
	if (!u->cancelled)
		update_rate(u, true);
	source_drop(u->s);
}

static void retry_fired(struct ioloop_timer *t)
{
	struct url_src *u = t->data;
	if (u->active && !u->cancelled)
		begin_transfer(u);
}

/* Schedule another transfer from u->pos, or fail if out of retries. */
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
		source_done(u);
		return;
	}
	u->retries++;
	stream_set_attr(u->s, "retries", "%d", u->retries);
	log_warn("%s: %s at byte %" PRIu64 "; retry %d of %d in %" PRIu64 " ms", stream_name(u->s),
		 why, u->pos, u->retries, u->opts.retries, delay);
	end_transfer(u);
	ioloop_timer_arm(u->loop, &u->retry_timer, delay);
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

/* Follow a 3xx. Returns true if a new transfer was started or the stream
 * failed; false if this was not a redirect. */
static bool follow_redirect(struct url_src *u)
{
	if (!u->is_http || u->code < 300 || u->code >= 400)
		return false;
	char *target = NULL;
	curl_easy_getinfo(u->easy, CURLINFO_REDIRECT_URL, &target);
	if (!target) {
		stream_fail(u->s, EIO, "HTTP %ld without a Location", u->code);
		source_done(u);
		return true;
	}
	if (++u->redirects > u->opts.max_redirs) {
		stream_fail(u->s, EIO, "more than %d redirects", u->opts.max_redirs);
		source_done(u);
		return true;
	}
	if (strncasecmp(target, "http://", 7) && strncasecmp(target, "https://", 8) &&
	    strncasecmp(target, "ftp://", 6) && strncasecmp(target, "ftps://", 7)) {
		stream_fail(u->s, EIO, "redirect to a refused protocol: %.64s", target);
		source_done(u);
		return true;
	}
	char *next = strdup(target);
	if (!next) {
		stream_fail(u->s, ENOMEM, "out of memory");
		source_done(u);
	} else {
		/* Another scheme is another origin too: https -> http on the
		 * same host and port would send the credentials in clear. */
		if (!source_url_same_origin(u->cur_url, target))
			u->send_auth = u->send_auth && u->opts.location_trusted;
		free(u->cur_url);
		u->cur_url = next;
		char *shown = source_url_redact(next);
		stream_set_attr(u->s, "url", "%s", shown ? shown : "");
		log_debug("%s: redirected (%ld) to %s", stream_name(u->s), u->code, shown);
		free(shown);
		end_transfer(u);
		begin_transfer(u);
	}
	return true;
}

/* A transfer finished with @rc: end, retry, or fail the stream. */
/* Everything is here: the stream is complete, whichever transfers
 * brought it. Returns true if so (and the source is done). */
static bool all_present(struct url_src *u)
{
	if (u->length < 0 || stream_frontier(u->s) < (uint64_t)u->length)
		return false;
	u->complete = true;
	stream_end(u->s);
	source_done(u);
	return true;
}

static void transfer_done(struct url_src *u, CURLcode rc)
{
	if (u->cancelled) {
		source_done(u);
		return;
	}
	if (u->stopped) {
		source_done(u);
		return;
	}
	if (u->jump) {
		/* The write callback stopped at bytes that range fetches brought
		 * or are bringing: go on after them (not a retry). If a range
		 * fetch gives up, range_done() brings the fill back. */
		u->pos = u->jump;
		u->jump = 0;
		end_transfer(u);
		if (!all_present(u) && (u->length < 0 || u->pos < (uint64_t)u->length))
			begin_transfer(u);
		return;
	}
	if (rc == CURLE_OK && !u->got_headers)
		check_response(u); /* an empty body: no write callback ran */
	if (u->failure) {
		stream_fail(u->s, u->failure, "%s", u->failmsg);
		source_done(u);
		return;
	}
	if (u->retry_now) {
		u->retry_now = false;
		char why[sizeof(u->failmsg)];
		snprintf(why, sizeof(why), "%s", u->failmsg);
		retry(u, why, u->retry_after_ms);
		return;
	}
	if (rc == CURLE_OK) {
		if (follow_redirect(u))
			return;
		uint64_t want = u->length >= 0 ? (uint64_t)u->length : 0;
		if (u->ondemand && u->main_end && u->main_end < want)
			want = u->main_end;
		if (u->length >= 0 && u->pos < want) {
			retry(u, "the body ended early", -1);
			return;
		}
		if (u->ondemand) {
			/* The head is in; the rest comes as readers ask. */
			end_transfer(u);
			all_present(u);
			return;
		}
		uint64_t fr = stream_frontier(u->s);
		if (u->length >= 0 && fr < (uint64_t)u->length) {
			/* The fill jumped over bytes range fetches brought, and
			 * some were evicted before the frontier got there. */
			end_transfer(u);
			u->pos = fr;
			begin_transfer(u);
			return;
		}
		u->complete = true;
		stream_end(u->s);
		source_done(u);
		return;
	}

	const char *detail = u->errbuf[0] ? u->errbuf : curl_easy_strerror(rc);
	if (tls_error(rc)) {
		stream_fail(u->s, EIO, "TLS: %s", detail);
	} else if (rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY) {
		stream_fail(u->s, EIO, "%s", detail);
	} else if (connection_error(rc) && u->pos == 0 && u->retries == 0) {
		stream_fail(u->s, EIO, "%s", detail);
	} else if (rc == CURLE_REMOTE_FILE_NOT_FOUND || rc == CURLE_REMOTE_ACCESS_DENIED ||
		   rc == CURLE_LOGIN_DENIED || rc == CURLE_UNSUPPORTED_PROTOCOL ||
		   rc == CURLE_URL_MALFORMAT || rc == CURLE_TOO_MANY_REDIRECTS) {
		stream_fail(u->s, EIO, "%s", detail);
	} else {
		/* Dropped, stalled, cut short: resume where we are. */
		char why[CURL_ERROR_SIZE + 32];
		snprintf(why, sizeof(why), "%s",
			 rc == CURLE_OPERATION_TIMEDOUT ? "stalled" : detail);
		retry(u, why, -1);
		return;
	}
	source_done(u);
}

static void multi_check(void)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(g_multi.multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		void *p = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&p);
		if (!p)
			continue;
		if (*(enum xfer_kind *)p == X_RANGE) {
			range_done(p, m->data.result);
		} else {
			struct url_src *u = p;
			if (u->easy == m->easy_handle)
				transfer_done(u, m->data.result);
		}
	}
}

static void begin_transfer(struct url_src *u)
{
	CURL *e = curl_easy_init();
	if (!e) {
		stream_fail(u->s, ENOMEM, "cannot create a transfer");
		source_done(u);
		return;
	}
	u->easy = e;
	u->errbuf[0] = '\0';
	u->failure = 0;
	u->retry_now = false;
	u->retry_after_ms = -1;
	u->got_headers = false;
	u->code = 0;
	u->skip = 0;
	u->range_asked = u->pos > 0;

	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)u);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, u);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, u->errbuf);
	u->headers = setup_easy(u, e);
	if (u->ondemand && !u->ready) {
		char range[64];
		u->main_end = ONDEMAND_FIRST;
		snprintf(range, sizeof(range), "0-%u", ONDEMAND_FIRST - 1);
		curl_easy_setopt(e, CURLOPT_RANGE, range);
	}
	if (u->range_asked) {
		char range[64];
		snprintf(range, sizeof(range), "%" PRIu64 "-", u->pos);
		if (u->ondemand && u->main_end > u->pos)
			snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, u->pos,
				 u->main_end - 1);
		if (u->is_http) {
			curl_easy_setopt(e, CURLOPT_RANGE, range);
			u->headers = add_if_range(u, u->headers);
		} else {
			curl_easy_setopt(e, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)u->pos);
		}
	}
	if (u->headers)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, u->headers);
	if (log_get_level() >= LOG_LVL_DEBUG)
		log_debug("%s: GET from byte %" PRIu64, stream_name(u->s), u->pos);

	CURLMcode mc = curl_multi_add_handle(g_multi.multi, e);
	if (mc != CURLM_OK) {
		stream_fail(u->s, EIO, "curl: %s", curl_multi_strerror(mc));
		source_done(u);
		return;
	}
	u->main_running = true;
}

/* The options every request of @u shares; returns the header list
 * (request headers for this file, if they may go to this host). */
static struct curl_slist *setup_easy(struct url_src *u, CURL *e)
{
	struct curl_slist *headers = NULL;
	curl_easy_setopt(e, CURLOPT_URL, u->cur_url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https,ftp,ftps");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* see follow_redirect() */
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(u->opts.connect_timeout * 1000));
	/* A stall: less than one byte per second for stall_timeout seconds. */
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)(u->opts.stall_timeout + 0.999));
	curl_easy_setopt(e, CURLOPT_USERAGENT, "streamfs/" STREAMFS_VERSION);
	if (u->opts.insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (u->send_auth) {
		for (size_t i = 0; i < u->opts.nheaders; i++) {
			struct curl_slist *l = curl_slist_append(headers, u->opts.headers[i]);
			if (l)
				headers = l;
		}
		if (u->opts.userpwd)
			curl_easy_setopt(e, CURLOPT_USERPWD, u->opts.userpwd);
		/* netrc entries are per host, not per scheme: like --user, they
		 * do not follow a redirect to another origin. */
		if (u->opts.netrc || u->opts.netrc_file)
			curl_easy_setopt(e, CURLOPT_NETRC, (long)CURL_NETRC_OPTIONAL);
		if (u->opts.netrc_file)
			curl_easy_setopt(e, CURLOPT_NETRC_FILE, u->opts.netrc_file);
	}
	return headers;
}

/* If-Range with the validator, so a changed resource answers 200 and is
 * caught instead of mixed in. */
static struct curl_slist *add_if_range(struct url_src *u, struct curl_slist *headers)
{
	char ir[600];
	const char *v = u->etag ? u->etag : u->last_modified;
	if (v && snprintf(ir, sizeof(ir), "If-Range: %s", v) < (int)sizeof(ir)) {
		struct curl_slist *l = curl_slist_append(headers, ir);
		if (l)
			headers = l;
	}
	return headers;
}

/* ---- random access: range transfers ----------------------------------- */


static void range_free(struct url_src *u, struct range_xfer *x)
{
	for (struct range_xfer **p = &u->ranges; *p; p = &(*p)->next) {
		if (*p == x) {
			*p = x->next;
			u->nranges--;
			if (x->paused)
				u->npaused--;
			break;
		}
	}
	curl_multi_remove_handle(g_multi.multi, x->easy);
	curl_easy_cleanup(x->easy);
	curl_slist_free_all(x->headers);
	free(x);
}

static bool range_check(struct range_xfer *x)
{
	struct url_src *u = x->u;
	x->got_headers = true;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->code);
	if (x->code == 416) {
		/* Nothing at pos: past the end, or the resource shrank. */
		x->past_end = true;
		x->end_total = total_of_416(x->easy);
		if (u->length >= 0 && x->pos < (uint64_t)u->length) {
			changed_416(x->end_total, x->pos, u->length, x->failmsg, sizeof(x->failmsg));
			x->failure = EIO;
		}
		return false;
	}
	if (x->code >= 400) {
		snprintf(x->failmsg, sizeof(x->failmsg), "HTTP %ld", x->code);
		return false; /* retried, then left to the sequential fill */
	}
	if (!same_version(u, x->easy, x->failmsg, sizeof(x->failmsg))) {
		x->failure = EIO;
		return false;
	}
	if (x->code != 206) {
		curl_off_t cl = -1;
		curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (x->code == 200 && u->length >= 0 && cl >= 0 && cl != u->length) {
			snprintf(x->failmsg, sizeof(x->failmsg), "the resource changed on the server (%"
				 PRId64 " bytes, was %" PRId64 ")", (int64_t)cl, u->length);
			x->failure = EIO;
			return false;
		}
		x->norange = true;
		return false;
	}
	if (!check_206(x->easy, x->pos, x->end - 1, u->length, NULL, x->failmsg,
		       sizeof(x->failmsg))) {
		x->failure = EIO;
		return false;
	}
	return true;
}

static size_t range_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct range_xfer *x = userp;
	size_t n = size * nmemb;
	if (x->u->cancelled)
		return 0;
	if (!x->got_headers && !range_check(x))
		return 0;
	size_t take = x->pos + n > x->end ? (size_t)(x->end - x->pos) : n;
	int r = take ? stream_write(x->u->s, x->pos, data, take) : 0;
	if (r == -ENOBUFS) {
		/* A paused transfer leaves its slot to the next request: that
		 * one may be for a reader whose room is already reserved, and
		 * its bytes are what frees room for this one. */
		struct url_src *u = x->u;
		x->paused = true;
		u->npaused++;
		if (u->queue && !u->pump_queued) {
			stream_ref(u->s);
			if (ioloop_call(u->loop, pump_call, u) == 0)
				u->pump_queued = true;
			else
				stream_unref(u->s);
		}
		return CURL_WRITEFUNC_PAUSE;
	}
	if (r < 0) {
		x->unstorable = r == -EFBIG;
		return 0;
	}
	x->pos += take;
	if (x->pos > x->u->seen_end)
		x->u->seen_end = x->pos;
	x->u->rate_bytes += take;
	return n;
}

static void start_range(struct url_src *u, struct fetch_req *q)
{
	struct range_xfer *x = calloc(1, sizeof(*x));
	CURL *e = x ? curl_easy_init() : NULL;
	if (!e) {
		free(x);
		stream_unwant(u->s, q->off, q->end - q->off);
		return;
	}
	x->kind = X_RANGE;
	x->u = u;
	x->easy = e;
	x->from = x->pos = q->off;
	x->end = q->end;
	x->tries = q->tries;
	x->headers = add_if_range(u, setup_easy(u, e));
	char range[64];
	snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, q->off, q->end - 1);
	curl_easy_setopt(e, CURLOPT_RANGE, range);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, range_write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	if (x->headers)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
	log_debug("%s: range GET %s", stream_name(u->s), range);
	if (curl_multi_add_handle(g_multi.multi, e) != CURLM_OK) {
		curl_easy_cleanup(e);
		curl_slist_free_all(x->headers);
		free(x);
		stream_unwant(u->s, q->off, q->end - q->off);
		return;
	}
	x->next = u->ranges;
	u->ranges = x;
	u->nranges++;
}

static void enqueue(struct url_src *u, uint64_t off, uint64_t end, int tries)
{
	struct fetch_req **p = &u->queue;
	while (*p) {
		/* Neighbouring misses become one request. */
		if ((*p)->end == off && (*p)->tries == tries) {
			(*p)->end = end;
			return;
		}
		p = &(*p)->next;
	}
	struct fetch_req *q = calloc(1, sizeof(*q));
	if (!q) {
		stream_unwant(u->s, off, end - off);
		return;
	}
	q->u = u;
	q->off = off;
	q->end = end;
	q->tries = tries;
	*p = q;
}

static void pump_queue(struct url_src *u)
{
	while (u->active && u->ready && u->queue && u->nranges - u->npaused < MAX_RANGES) {
		struct fetch_req *q = u->queue;
		u->queue = q->next;
		start_range(u, q);
		free(q);
	}
}

/* Ranges nobody will fetch go back to the sequential fill. */
static void give_up_ranges(struct url_src *u)
{
	while (u->queue) {
		struct fetch_req *q = u->queue;
		u->queue = q->next;
		stream_unwant(u->s, q->off, q->end - q->off);
		free(q);
	}
}

/* The server does not do ranges after all: everything comes sequentially. */
static void no_ranges(struct url_src *u)
{
	if (!u->no_ranges)
		log_warn("%s: the server ignores Range requests; reads ahead wait for the "
			 "sequential download", stream_name(u->s));
	u->no_ranges = true;
	u->evictable = false;
	stream_set_evictable(u->s, false);
	stream_set_fetch_distance(u->s, UINT64_MAX);
	give_up_ranges(u);
	u->ondemand = false;
	u->main_end = 0;
	refill_from(u, stream_run_end(u->s, 0));
}

/* fill=all: the sequential fill must bring [pos, ...) after all (a range
 * fetch gave up on it): restart it there if it has gone past or stopped. */
static void refill_from(struct url_src *u, uint64_t pos)
{
	if (u->ondemand || (u->main_running && u->pos <= pos))
		return;
	end_transfer(u);
	u->pos = pos;
	u->jump = 0;
	begin_transfer(u);
}

/* The stream is complete, a range of evicted bytes came back (or not):
 * retry, or tell the readers; stop when no transfer is left. */
static void refetch_done(struct url_src *u, uint64_t pos, uint64_t end, int tries, bool norange,
			 const char *msg)
{
	if (norange) {
		/* The server stopped honouring Range: nothing comes back. */
		u->evictable = false;
		stream_set_evictable(u->s, false);
		stream_fetch_failed(u->s, pos, end - pos);
	} else if (pos < end) {
		if (tries + 1 < RANGE_TRIES) {
			log_warn("%s: fetching evicted bytes at %" PRIu64 " failed (%s); trying again",
				 stream_name(u->s), pos, msg);
			enqueue(u, pos, end, tries + 1);
		} else {
			log_warn("%s: fetching evicted bytes at %" PRIu64 " failed: %s",
				 stream_name(u->s), pos, msg);
			stream_fetch_failed(u->s, pos, end - pos);
		}
	}
	pump_queue(u);
	if (!u->ranges && !u->queue)
		source_done(u); /* woken again by the next fetch */
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
		stream_fail(u->s, EIO, "the resource changed on the server (HTTP 416 at byte %" PRIu64
			    ", after bytes up to %" PRIu64 ")", at, u->seen_end);
	}
	source_done(u);
	return false;
}

/* Why @x stopped short, for the log and the stream's error. */
static void range_why(const struct range_xfer *x, CURLcode rc, char *msg, size_t len)
{
	if (x->failmsg[0])
		snprintf(msg, len, "%s", x->failmsg);
	else if (rc == CURLE_OK)
		snprintf(msg, len, "HTTP %ld ended at byte %" PRIu64 ", short of %" PRIu64, x->code,
			 x->pos, x->end);
	else if (x->errbuf[0])
		snprintf(msg, len, "%s", x->errbuf);
	else
		snprintf(msg, len, "%s", curl_easy_strerror(rc));
}

/*
 * A range past the store's limit: its readers got EFBIG, the stream goes on,
 * and asking again would only be refused again. Returns false (the source
 * is done) if the stream stopped after all: its -EFBIG was for bytes past
 * the announced length.
 */
static bool range_unstorable(struct url_src *u, uint64_t pos, uint64_t end)
{
	stream_unwant(u->s, pos, end - pos);
	struct stream_info in;
	stream_get_info(u->s, &in);
	if (in.state == STREAM_RUNNING)
		return true;
	source_done(u);
	return false;
}

static void range_done(struct range_xfer *x, CURLcode rc)
{
	struct url_src *u = x->u;
	if (rc == CURLE_OK && !x->got_headers && u->active && !u->cancelled)
		range_check(x); /* an empty body: no write callback ran */
	uint64_t pos = x->pos, end = x->end;
	int tries = x->tries;
	bool norange = x->norange, past_end = x->past_end, unstorable = x->unstorable;
	bool progress = pos > x->from;
	int64_t end_total = x->end_total;
	int failure = x->failure;
	char msg[CURL_ERROR_SIZE + 64];
	range_why(x, rc, msg, sizeof(msg));
	range_free(u, x);
	if (!u->active || u->cancelled)
		return;
	if (failure) {
		stream_fail(u->s, failure, "%s", msg);
		source_done(u);
		return;
	}
	if (u->complete) {
		refetch_done(u, pos, end, tries, norange || unstorable || past_end, msg);
		return;
	}
	if (u->length >= 0 && end > (uint64_t)u->length) /* the end was found meanwhile */
		end = pos > (uint64_t)u->length ? pos : (uint64_t)u->length;
	if (unstorable) {
		if (!range_unstorable(u, pos, end))
			return;
	} else if (past_end) {
		bool probing = false;
		if (u->length < 0 && u->ondemand) {
			if (!end_found(u, pos, end, end_total, tries))
				return;
			probing = u->length < 0; /* it brings [pos, end) too: still wanted */
		} else if (u->length < 0) {
			refill_from(u, pos); /* the sequential fill finds the end */
		}
		if (!probing)
			stream_unwant(u->s, pos, end - pos);
	} else if (norange) {
		stream_unwant(u->s, pos, end - pos);
		no_ranges(u);
	} else if (pos < end && rc == CURLE_OK && progress && u->length < 0) {
		/* No total: a short 206 is how the data ends. Ask for the rest
		 * (not a failed try: every round brings bytes). */
		enqueue(u, pos, end, tries);
	} else if (pos < end) {
		if (tries + 1 < RANGE_TRIES) {
			log_warn("%s: range fetch at byte %" PRIu64 " failed (%s); trying again",
				 stream_name(u->s), pos, msg);
			enqueue(u, pos, end, tries + 1);
		} else {
			stream_unwant(u->s, pos, end - pos);
			if (u->ondemand) {
				stream_fail(u->s, EIO, "range fetch at byte %" PRIu64 " failed: %s",
					    pos, msg);
				source_done(u);
				return;
			}
			refill_from(u, pos);
		}
	}
	if (all_present(u))
		return;
	pump_queue(u);
}

static void pump_call(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	u->pump_queued = false;
	pump_queue(u);
	stream_unref(s); /* the ref of this call */
}

static void fetch_in_loop(void *arg)
{
	struct fetch_req *q = arg;
	struct url_src *u = q->u;
	struct stream *s = u->s;
	if (!u->active && u->complete && u->evictable && !u->cancelled) {
		/* Evicted bytes of a complete stream: wake the source for as
		 * long as range transfers run. */
		source_take(s);
		u->active = true;
	}
	if (!u->active || u->cancelled) {
		free(q);
	} else if (u->no_ranges || !u->is_http) {
		stream_unwant(s, q->off, q->end - q->off);
		free(q);
	} else if ((!u->ondemand && u->main_running && q->off >= u->pos &&
		    q->off - u->pos < u->near) ||
		   (u->ondemand && u->main_running && q->off >= u->pos && q->end <= u->main_end)) {
		/* The sequential fill (or the first request) is about to get there. */
		stream_unwant(s, q->off, q->end - q->off);
		free(q);
	} else {
		enqueue(u, q->off, q->end, 0);
		free(q);
		pump_queue(u);
	}
	stream_unref(s); /* the ref of this call */
}

static void url_fetch(struct stream *s, void *src, uint64_t off, uint64_t len)
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
	stream_ref(s);
	if (ioloop_call(u->loop, fetch_in_loop, q) < 0) {
		stream_unwant(s, off, len);
		stream_unref(s);
		free(q);
	}
}

/* ---- the source ------------------------------------------------------- */

static void url_begin(void *arg)
{
	struct url_src *u = arg;
	int r = multi_setup(u->loop);
	if (r < 0) {
		stream_fail(u->s, -r, "cannot set up libcurl");
		source_done(u);
		return;
	}
	u->start_ms = ioloop_now_ms();
	stream_set_attr(u->s, "retries", "0");
	u->ondemand = u->is_http && u->opts.fill == FILL_ONDEMAND;
	u->near = NEAR_MIN;
	stream_set_fetch_distance(u->s, !u->is_http ? UINT64_MAX : u->ondemand ? 0 : NEAR_MIN);
	begin_transfer(u);
}

static void url_cancel_in_loop(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	bool was = u->active;
	u->cancelled = true; /* a complete stream: no refetch from now on */
	if (was)
		source_done(u);
	stream_unref(s); /* the ref of this call */
}

static int url_start(struct stream *s, void *src)
{
	struct url_src *u = src;
	source_take(s);
	u->active = true;
	int r = ioloop_call(u->loop, url_begin, u);
	if (r < 0) {
		u->active = false;
		source_drop(s);
	}
	return r;
}

static void url_cancel(struct stream *s, void *src)
{
	struct url_src *u = src;
	stream_ref(s);
	if (ioloop_call(u->loop, url_cancel_in_loop, u) < 0)
		stream_unref(s);
}

/* Room in the store again: go on with the transfers that waited for it.
 * A transfer may pause again at once (from inside curl_easy_pause). */
static void url_resume_in_loop(void *arg)
{
	struct url_src *u = arg;
	struct stream *s = u->s;
	if (u->active && !u->cancelled) {
		if (u->easy && u->main_paused) {
			u->main_paused = false;
			curl_easy_pause(u->easy, CURLPAUSE_CONT);
		}
		for (struct range_xfer *x = u->ranges; x; x = x->next) {
			if (x->paused) {
				x->paused = false;
				u->npaused--;
				curl_easy_pause(x->easy, CURLPAUSE_CONT);
			}
		}
		multi_check();
	}
	stream_unref(s); /* the ref of this call */
}

static void url_resume(struct stream *s, void *src)
{
	struct url_src *u = src;
	stream_ref(s);
	if (ioloop_call(u->loop, url_resume_in_loop, u) < 0)
		stream_unref(s);
}

static void url_destroy(void *src)
{
	struct url_src *u = src;
	free(u->url);
	free(u->cur_url);
	free(u->etag);
	free(u->last_modified);
	config_file_opts_free(&u->opts);
	free(u);
}

static const struct stream_source_ops url_ops = {
	.kind = "url",
	.start = url_start,
	.cancel = url_cancel,
	.destroy = url_destroy,
	.fetch = url_fetch,
	.resume = url_resume,
};

struct stream *source_url_new(struct ioloop *loop, const char *name, const char *url,
			      const struct file_opts *opts, struct store *store)
{
	struct url_src *u = calloc(1, sizeof(*u));
	if (!u || !(u->url = strdup(url)) || !(u->cur_url = strdup(url)) ||
	    config_file_opts_copy(&u->opts, opts) < 0) {
		if (u) {
			free(u->url);
			free(u->cur_url);
		}
		free(u);
		store_close(store);
		errno = ENOMEM;
		return NULL;
	}
	u->kind = X_MAIN;
	u->loop = loop;
	u->length = -1;
	u->send_auth = true;
	u->is_http = strncasecmp(url, "http", 4) == 0;
	u->retry_timer.cb = retry_fired;
	u->retry_timer.data = u;
	struct stream *s = stream_new(name, store, &url_ops, u);
	if (!s)
		return NULL;
	u->s = s;
	char *shown = source_url_redact(url);
	if (shown)
		stream_set_attr(s, "url", "%s", shown);
	free(shown);
	return s;
}
