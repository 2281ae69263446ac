/*
 * url_xfer.c - one request of a URL stream (struct xfer, in url.h): its
 * easy handle with the options every request shares, and what its
 * response says, parsed and checked.
 *
 * Every request, the sequential fill's and the range fetches', carries
 * the same options; the file's headers and credentials only while they
 * may still go to the current host (url_src.send_auth, see
 * url_transfer.c's redirects). No Accept-Encoding is sent: the body is
 * stored as sent, so the file is exactly the bytes of the resource.
 *
 * The checks are the contract that two versions of a resource are never
 * mixed: every 206 must be the part asked for of a resource of the
 * announced length with the first response's validator (url_check_206(),
 * url_same_version()). A server can send anything: every number is
 * parsed without overflow.
 */
#include "url.h"

#include "streamfs/s3.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- the request ---------------------------------------------------- */

/* The file's headers and credentials, for a request to its own origin. */
static void set_auth(struct xfer *x)
{
	const struct url_opts *o = &x->u->opts;
	for (size_t i = 0; i < o->nheaders; i++) {
		struct curl_slist *l = curl_slist_append(x->headers, o->headers[i]);
		if (l)
			x->headers = l;
	}
	if (o->userpwd)
		curl_easy_setopt(x->easy, CURLOPT_USERPWD, o->userpwd);
	/* SigV4 (S3): curl signs the method, the path, the query and every
	 * header it is given, with the key pair in userpwd. */
	if (o->aws_sigv4 && o->userpwd)
		curl_easy_setopt(x->easy, CURLOPT_AWS_SIGV4, o->aws_sigv4);
	/* netrc entries are per host, not per scheme: like --user, they do
	 * not follow a redirect to another origin. */
	if (o->netrc || o->netrc_file)
		curl_easy_setopt(x->easy, CURLOPT_NETRC, (long)CURL_NETRC_OPTIONAL);
	if (o->netrc_file)
		curl_easy_setopt(x->easy, CURLOPT_NETRC_FILE, o->netrc_file);
}

int xfer_open(struct xfer *x, curl_write_callback write)
{
	struct url_src *u = x->u;
	CURL *e = curl_easy_init();
	if (!e)
		return -ENOMEM;
	x->easy = e;
	x->headers = NULL;
	x->errbuf[0] = '\0';
	x->collect = false;
	x->errbody_len = 0;
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(e, CURLOPT_URL, u->cur_url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https,ftp,ftps");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* see url_transfer.c */
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(u->opts.connect_timeout * 1000));
	/* A stall: less than one byte per second for stall_timeout seconds. */
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)(u->opts.stall_timeout + 0.999));
	curl_easy_setopt(e, CURLOPT_USERAGENT, "streamfs/" STREAMFS_VERSION);
	if (u->opts.path_as_is)
		curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
	url_debug_setup(x);
	if (u->opts.insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
		curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYHOST, 0L);
	}
	/* Without --proxy nothing is set: libcurl then reads http_proxy,
	 * https_proxy, ALL_PROXY and NO_PROXY from the environment, as curl
	 * does. Setting CURLOPT_PROXY (even to "") would turn that off. */
	if (u->opts.proxy)
		curl_easy_setopt(e, CURLOPT_PROXY, u->opts.proxy);
	if (u->opts.noproxy)
		curl_easy_setopt(e, CURLOPT_NOPROXY, u->opts.noproxy);
	if (u->send_auth)
		set_auth(x);
	return 0;
}

void xfer_if_range(struct xfer *x)
{
	char ir[600];
	const char *v = x->u->etag ? x->u->etag : x->u->last_modified;
	if (v && snprintf(ir, sizeof(ir), "If-Range: %s", v) < (int)sizeof(ir)) {
		struct curl_slist *l = curl_slist_append(x->headers, ir);
		if (l)
			x->headers = l;
	}
}

CURLMcode xfer_send(struct xfer *x)
{
	if (x->headers)
		curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
	CURLMcode mc = url_multi_add(x->easy);
	x->in_multi = mc == CURLM_OK;
	return mc;
}

void xfer_close(struct xfer *x)
{
	if (x->easy) {
		if (x->in_multi)
			url_multi_remove(x->easy);
		x->in_multi = false;
		curl_easy_cleanup(x->easy);
		x->easy = NULL;
	}
	curl_slist_free_all(x->headers);
	x->headers = NULL;
}

void xfer_fail(struct xfer *x, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->failmsg, sizeof(x->failmsg), fmt, ap);
	va_end(ap);
	x->failure = err;
}

int xfer_store(struct xfer *x, const char *data, size_t n, unsigned flags, size_t *stored)
{
	struct url_src *u = x->u;
	size_t k = 0; /* n on success, the prefix stored on -ENOBUFS, else 0 */
	int r = n ? stream_write_flags(u->s, x->pos, data, n, flags, &k) : 0;
	*stored = k;
	x->pos += k;
	if (x->pos > u->seen_end)
		u->seen_end = x->pos;
	u->rate_bytes += k;
	return r;
}

/* ---- the response --------------------------------------------------- */

void xfer_collect(struct xfer *x, const char *data, size_t n)
{
	size_t room = sizeof(x->errbody) - x->errbody_len;
	if (n > room)
		n = room;
	memcpy(x->errbody + x->errbody_len, data, n);
	x->errbody_len += n;
}

bool xfer_bucket_region(struct xfer *x, char *out, size_t size)
{
	return x->easy && url_header(x, "x-amz-bucket-region", out, size) && s3_region_ok(out);
}

void xfer_explain(struct xfer *x)
{
	char code[64], region[64];
	if (!x->collect || strncmp(x->failmsg, "HTTP ", 5) != 0 || strchr(x->failmsg, ':'))
		return;
	size_t len = strlen(x->failmsg);
	if (s3_error_code(x->errbody, x->errbody_len, code, sizeof(code)))
		snprintf(x->failmsg + len, sizeof(x->failmsg) - len, ": %s", code);
	/* Asked in the wrong region, S3 says where the bucket is. */
	len = strlen(x->failmsg);
	if (xfer_bucket_region(x, region, sizeof(region)))
		snprintf(x->failmsg + len, sizeof(x->failmsg) - len, " (the bucket is in %s)",
		         region);
}

bool url_header(struct xfer *x, const char *name, char *out, size_t size)
{
	struct curl_header *h;
	if (curl_easy_header(x->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return false;
	snprintf(out, size, "%s", h->value);
	return true;
}

int64_t url_content_length(struct xfer *x)
{
	curl_off_t cl = -1;
	curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	return cl;
}

/* Any number of digits is taken without overflow (RFC 9110 10.2.3). */
int url_parse_retry_after(const char *v, uint64_t cap_ms, int64_t *ms)
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

int64_t url_total_of_416(struct xfer *x)
{
	char v[256];
	struct content_range cr;
	if (url_header(x, "Content-Range", v, sizeof(v)) && parse_content_range(v, true, &cr))
		return cr.total;
	return -1;
}

bool url_same_version(struct xfer *x)
{
	const struct url_src *u = x->u;
	char etag[512] = "", lm[256] = "";
	bool has_etag = url_header(x, "ETag", etag, sizeof(etag));
	bool has_lm = url_header(x, "Last-Modified", lm, sizeof(lm));
	bool same = u->etag            ? has_etag && strcmp(etag, u->etag) == 0
	            : u->last_modified ? has_lm && strcmp(lm, u->last_modified) == 0
	                               : true;
	if (!same)
		snprintf(x->failmsg, sizeof(x->failmsg),
		         "the resource changed while it was read (%s %.80s, was %.80s)",
		         u->etag ? "ETag" : "Last-Modified", u->etag ? etag : lm,
		         u->etag ? u->etag : u->last_modified);
	return same;
}

/* x->failmsg: the resource is @total bytes now, not what it was. */
static void changed_total(struct xfer *x, int64_t total)
{
	snprintf(x->failmsg, sizeof(x->failmsg),
	         "the resource changed on the server (%" PRId64 " bytes, was %" PRId64 ")", total,
	         x->u->length);
}

bool url_same_length(struct xfer *x, int64_t total)
{
	if (total < 0 || x->u->length < 0 || total == x->u->length)
		return true;
	changed_total(x, total);
	return false;
}

void url_changed_416(struct xfer *x, int64_t total, uint64_t at)
{
	if (total >= 0)
		changed_total(x, total);
	else
		snprintf(x->failmsg, sizeof(x->failmsg),
		         "the resource changed on the server (HTTP 416 at byte %" PRIu64
		         " of %" PRId64 ")",
		         at, x->u->length);
}

/* x->failmsg: the 206 is not the part asked for. */
static void wrong_range(struct xfer *x, uint64_t from, uint64_t to, const char *cr, bool parsed,
                        int64_t cl)
{
	char asked[48];
	if (to == UINT64_MAX)
		snprintf(asked, sizeof(asked), "%" PRIu64 "-", from);
	else
		snprintf(asked, sizeof(asked), "%" PRIu64 "-%" PRIu64, from, to);
	if (!cr)
		snprintf(x->failmsg, sizeof(x->failmsg),
		         "the server sent the wrong range: no Content-Range for bytes %s", asked);
	else if (!parsed)
		snprintf(x->failmsg, sizeof(x->failmsg),
		         "the server sent the wrong range: Content-Range '%.80s' for bytes %s", cr,
		         asked);
	else
		snprintf(x->failmsg, sizeof(x->failmsg),
		         "the server sent the wrong range: Content-Range '%.80s' with "
		         "Content-Length %" PRId64,
		         cr, cl);
}

/* A server that sends another part would have it stored at the wrong
 * offset; a different total is a changed resource even without a
 * validator. */
bool url_check_206(struct xfer *x, uint64_t from, uint64_t to, int64_t *total)
{
	char v[256] = "";
	struct content_range cr;
	int64_t cl = url_content_length(x);
	bool has = url_header(x, "Content-Range", v, sizeof(v));
	bool ok = has && parse_content_range(v, false, &cr) && cr.start == from &&
	          cr.end >= cr.start && cr.end <= to &&
	          (cr.total < 0 || cr.end < (uint64_t)cr.total);
	if (!ok || (cl >= 0 && (uint64_t)cl != cr.end - cr.start + 1)) {
		wrong_range(x, from, to, has ? v : NULL, ok, cl);
		return false;
	}
	if (!url_same_length(x, cr.total))
		return false;
	if (total)
		*total = cr.total;
	return true;
}
