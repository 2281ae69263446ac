/*
 * url_debug.c - libcurl's verbose output in the log, at -vv.
 *
 * What curl says about a request (connects, TLS, redirects, the request
 * and response headers) is the first thing wanted when a URL misbehaves;
 * it goes to the log at debug level, one log line per line of curl's,
 * prefixed like curl's own "-v" ("*" notes, ">" sent, "<" received) and
 * with the stream's name. Body bytes (CURLINFO_DATA_*, SSL_DATA_*) are
 * never logged: they are the file, not its debugging.
 *
 * Credentials never reach the log: url_debug_redact() blanks the values
 * of the headers that carry them and the secrets of URLs, whichever line
 * they are on. log.c then escapes what is left, as for any text from a
 * server.
 */
#include "url.h"

#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static atomic_bool verbose;

void source_url_set_verbose(bool on)
{
	atomic_store(&verbose, on);
}

/* ---- redaction ---------------------------------------------------------- */

/* Output of at most size - 1 bytes, always NUL-terminated. */
struct out {
	char *buf;
	size_t size, len;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->len + n >= o->size)
		n = o->size - 1 - o->len;
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

static const char redacted[] = "[redacted]";

static const char *const secret_headers[] = {"authorization", "proxy-authorization",  "cookie",
                                             "set-cookie",    "x-amz-security-token", NULL};

static const char *const secret_params[] = {
    "x-amz-signature=", "x-amz-credential=", "x-amz-security-token=", NULL};

/* Does the line start with a header that carries a secret? The length of
 * its name and colon, else 0. */
static size_t secret_header(const char *l, size_t n)
{
	for (const char *const *h = secret_headers; *h; h++) {
		size_t k = strlen(*h);
		if (n > k && strncasecmp(l, *h, k) == 0 && l[k] == ':')
			return k + 1;
	}
	return 0;
}

/* Is there a query parameter that carries a secret at @p? Its length
 * (name and '='), else 0. */
static size_t secret_param(const char *p, size_t n)
{
	for (const char *const *q = secret_params; *q; q++) {
		size_t k = strlen(*q);
		if (n >= k && strncasecmp(p, *q, k) == 0)
			return k;
	}
	return 0;
}

/* Characters that end a URL's authority or a query value in a line. */
static bool url_stop(char c)
{
	return c == '/' || c == '?' || c == '#' || c == ' ' || c == '\t' || c == '\'' || c == '"' ||
	       c == '<' || c == '>';
}

char *url_debug_redact(const char *l, size_t n, char *buf, size_t size)
{
	struct out o = {buf, size, 0};
	buf[0] = '\0';
	size_t h = secret_header(l, n);
	if (h) {
		put(&o, l, h);
		put(&o, " ", 1);
		put(&o, redacted, sizeof(redacted) - 1);
		return buf;
	}
	size_t i = 0;
	while (i < n) {
		size_t k;
		if (i + 3 <= n && memcmp(l + i, "://", 3) == 0) {
			/* scheme://[userinfo@]host: the userinfo goes. */
			put(&o, "://", 3);
			i += 3;
			size_t end = i;
			while (end < n && !url_stop(l[end]))
				end++;
			const char *at = memrchr(l + i, '@', end - i);
			if (at) {
				put(&o, redacted, sizeof(redacted) - 1);
				i = (size_t)(at - l);
			}
			continue;
		}
		if ((l[i] == '?' || l[i] == '&') && (k = secret_param(l + i + 1, n - i - 1))) {
			put(&o, l + i, k + 1);
			i += k + 1;
			while (i < n && l[i] != '&' && !url_stop(l[i]))
				i++;
			put(&o, redacted, sizeof(redacted) - 1);
			continue;
		}
		put(&o, l + i, 1);
		i++;
	}
	return buf;
}

/* ---- curl's debug callback ---------------------------------------------- */

static int debug_cb(CURL *easy, curl_infotype type, char *data, size_t size, void *userp)
{
	struct xfer *x = userp;
	char mark;
	switch (type) {
	case CURLINFO_TEXT:
		mark = '*';
		break;
	case CURLINFO_HEADER_OUT:
		mark = '>';
		break;
	case CURLINFO_HEADER_IN:
		mark = '<';
		break;
	default:
		return 0; /* body and TLS bytes: never */
	}
	char line[1024];
	while (size) {
		const char *nl = memchr(data, '\n', size);
		size_t n = nl ? (size_t)(nl - data) : size;
		size_t step = nl ? n + 1 : n;
		if (n && data[n - 1] == '\r')
			n--;
		if (n) {
			url_debug_redact(data, n, line, sizeof(line));
			log_debug("%s: curl %c %s", stream_name(x->u->s), mark, line);
		}
		data += step;
		size -= step;
	}
	return 0;
}

void url_debug_setup(struct xfer *x)
{
	if (!atomic_load(&verbose) || log_get_level() < LOG_LVL_DEBUG)
		return;
	curl_easy_setopt(x->easy, CURLOPT_DEBUGFUNCTION, debug_cb);
	curl_easy_setopt(x->easy, CURLOPT_DEBUGDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_VERBOSE, 1L);
}
