/*
 * options.c - per-file options (--size, --header, --retries, ...): one
 * descriptor per option, and a parser for each kind of value.
 *
 * Contract in config.h and config_impl.h. What this file keeps true:
 * - The table fopts[] is the only list of per-file options: the command
 *   line (config.c), the manifest (manifest.c) and "streamfs add" (in the
 *   daemon, through config_set_file_option()) all look options up in it.
 * - A parser either sets its option or leaves struct file_opts exactly as
 *   it was (a failed header does not even grow the array), so a bad value
 *   in "streamfs add" cannot half-change a file.
 * - Numbers are parsed by hand: strtod() follows LC_NUMERIC, and "2.5"
 *   must not depend on the user's locale.
 */
#include "config_impl.h"

#include "streamfs/s3.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SECONDS_MAX 1000000000 /* ~31 years: any larger value is a typo */
#define STR_(x) #x
#define STR(x) STR_(x)
#define EXPECT_SECONDS "seconds (e.g. 30 or 2.5), at most " STR(SECONDS_MAX)

/* ---- string vectors ---- */

int strings_add(struct config_strings *v, const char *s)
{
	char *dup = strdup(s);

	if (!dup || config_strings_reserve(v, 2) < 0) {
		free(dup);
		errno = ENOMEM;
		return -1;
	}
	v->ptr[v->len++] = dup;
	v->ptr[v->len] = NULL;
	return 0;
}

void strings_free(struct config_strings *v)
{
	for (size_t i = 0; i < v->len; i++)
		free(v->ptr[i]);
	config_strings_free(v);
}

/* ---- struct file_opts ---- */

void config_file_opts_default(struct file_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->size = SIZE_AUTO;
	o->start = START_ACCESS;
	o->read = READ_FULL;
	o->fill = FILL_ALL;
	o->retries = 5;
	o->retry_time = 60;
	o->stall_timeout = 30;
	o->connect_timeout = 15;
	o->max_redirs = 10;
}

void config_file_opts_free(struct file_opts *o)
{
	if (!o)
		return;
	strings_free(&o->headers);
	free(o->userpwd);
	free(o->netrc_file);
	free(o->proxy);
	free(o->noproxy);
	free(o->region);
	free(o->endpoint_url);
	free(o->profile);
	memset(o, 0, sizeof(*o));
}

int config_file_opts_copy(struct file_opts *dst, const struct file_opts *src)
{
	struct file_opts o = *src;

	o.headers = (struct config_strings)VECTOR_INIT;
	o.userpwd = src->userpwd ? strdup(src->userpwd) : NULL;
	o.netrc_file = src->netrc_file ? strdup(src->netrc_file) : NULL;
	o.proxy = src->proxy ? strdup(src->proxy) : NULL;
	o.noproxy = src->noproxy ? strdup(src->noproxy) : NULL;
	o.region = src->region ? strdup(src->region) : NULL;
	o.endpoint_url = src->endpoint_url ? strdup(src->endpoint_url) : NULL;
	o.profile = src->profile ? strdup(src->profile) : NULL;
	if ((src->userpwd && !o.userpwd) || (src->netrc_file && !o.netrc_file) ||
	    (src->proxy && !o.proxy) || (src->noproxy && !o.noproxy) ||
	    (src->region && !o.region) || (src->endpoint_url && !o.endpoint_url) ||
	    (src->profile && !o.profile))
		goto nomem;
	for (size_t i = 0; i < src->headers.len; i++) {
		if (strings_add(&o.headers, src->headers.ptr[i]))
			goto nomem;
	}
	*dst = o;
	return 0;
nomem:
	config_file_opts_free(&o);
	memset(dst, 0, sizeof(*dst));
	errno = ENOMEM;
	return -1;
}

/* ---- value parsers ---- */

/*
 * BYTES: digits, then optionally K, M, G or T (binary) and optionally "iB"
 * or "B"; "B" alone is fine too. Returns 0, -EINVAL or -ERANGE (beyond
 * INT64_MAX: no file can be that large, and off_t is signed).
 */
static int parse_bytes(const char *s, uint64_t *out)
{
	static const char units[] = "kmgt";
	uint64_t v = 0;
	unsigned shift = 0;
	const char *p = s, *unit;
	bool range = false;

	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			range = true;
		else
			v = v * 10 + d;
	}
	unit = *p ? strchr(units, tolower((unsigned char)*p)) : NULL;
	if (unit) {
		shift = 10 * (unsigned)(unit - units + 1);
		p++;
	}
	if (shift && (*p == 'i' || *p == 'I') && (p[1] == 'B' || p[1] == 'b'))
		p += 2;
	else if (*p == 'B' || *p == 'b')
		p++;
	if (*p)
		return -EINVAL;
	if (range || v > ((uint64_t)INT64_MAX >> shift))
		return -ERANGE;
	*out = v << shift;
	return 0;
}

int config_parse_bytes(const char *s, uint64_t *out)
{
	return parse_bytes(s, out);
}

/* keep=BYTES: more than nothing (keep=0 would drop every byte). */
static enum fopt_result parse_keep(struct file_opts *o, const struct fopt *d, const char *value,
                                   char *err, size_t errlen)
{
	uint64_t bytes;
	int rc = parse_bytes(value, &bytes);

	if (rc)
		return rc == -ERANGE ? FOPT_TOO_LARGE : FOPT_BAD;
	if (bytes == 0)
		return FOPT_BAD;
	o->keep = bytes;
	return FOPT_OK;
}

static enum fopt_result parse_size(struct file_opts *o, const struct fopt *d, const char *value,
                                   char *err, size_t errlen)
{
	uint64_t bytes = 0;
	enum size_policy size;
	int rc;

	if (!strcasecmp(value, "auto")) {
		size = SIZE_AUTO;
	} else if (!strcasecmp(value, "wait")) {
		size = SIZE_WAIT;
	} else {
		rc = parse_bytes(value, &bytes);
		if (rc)
			return rc == -ERANGE ? FOPT_TOO_LARGE : FOPT_BAD;
		size = SIZE_FIXED;
	}
	o->size = size;
	o->size_bytes = bytes;
	o->size_given = true;
	return FOPT_OK;
}

/* The value of @s among @words (ended by a NULL word), or -1. */
static int keyword(const char *s, const struct keyword *words)
{
	for (; words->word; words++) {
		if (!strcasecmp(s, words->word))
			return words->value;
	}
	return -1;
}

/*
 * An enum field (start, read, fill): one of the descriptor's words. The
 * enums have no negative values, so each is compatible with unsigned int,
 * and may be set through an int lvalue (its signed counterpart).
 */
_Static_assert(sizeof(enum start_policy) == sizeof(int) &&
                   sizeof(enum read_policy) == sizeof(int) &&
                   sizeof(enum fill_policy) == sizeof(int),
               "policy enums are set through int");

static enum fopt_result parse_keyword(struct file_opts *o, const struct fopt *d, const char *value,
                                      char *err, size_t errlen)
{
	int v = keyword(value, d->words);

	if (v < 0)
		return FOPT_BAD;
	*(int *)((char *)o + d->field) = v;
	return FOPT_OK;
}

/* A bool field: one of the descriptor's words; a bare flag (NULL) is true. */
static enum fopt_result parse_flag(struct file_opts *o, const struct fopt *d, const char *value,
                                   char *err, size_t errlen)
{
	int v = value ? keyword(value, d->words) : 1;

	if (v < 0)
		return FOPT_BAD;
	*(bool *)((char *)o + d->field) = v;
	return FOPT_OK;
}

/* An int field: a non-negative decimal integer, no sign, no spaces. */
static enum fopt_result parse_count(struct file_opts *o, const struct fopt *d, const char *value,
                                    char *err, size_t errlen)
{
	long v = 0;
	const char *s = value;

	if (!isdigit((unsigned char)*s))
		return FOPT_BAD;
	for (; isdigit((unsigned char)*s); s++) {
		v = v * 10 + (*s - '0');
		if (v > INT_MAX)
			return FOPT_BAD;
	}
	if (*s)
		return FOPT_BAD;
	*(int *)((char *)o + d->field) = (int)v;
	return FOPT_OK;
}

int config_parse_seconds(const char *value, double *out)
{
	double v = 0, scale = 1;
	bool digits = false;
	const char *s = value;

	for (; isdigit((unsigned char)*s); s++, digits = true) {
		v = v * 10 + (*s - '0');
		if (v > SECONDS_MAX)
			return -1;
	}
	if (*s == '.') {
		for (s++; isdigit((unsigned char)*s); s++, digits = true) {
			scale /= 10;
			v += (*s - '0') * scale;
		}
	}
	if (!digits || *s || v > SECONDS_MAX)
		return -1;
	*out = v;
	return 0;
}

/* A double field of seconds: "30", "2.5", ".5", at most SECONDS_MAX. */
static enum fopt_result parse_seconds(struct file_opts *o, const struct fopt *d, const char *value,
                                      char *err, size_t errlen)
{
	double v;

	if (config_parse_seconds(value, &v))
		return FOPT_BAD;
	*(double *)((char *)o + d->field) = v;
	return FOPT_OK;
}

/* RFC 9110 token characters, the only ones allowed in a header name. */
static bool is_tchar(unsigned char c)
{
	return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/*
 * "Name: value", "Name:" (curl: drop that header) or "Name;" (curl: send it
 * empty). No CR or LF: a header must not smuggle in another one.
 */
static enum fopt_result parse_header(struct file_opts *o, const struct fopt *d, const char *value,
                                     char *err, size_t errlen)
{
	const char *p = value;

	while (is_tchar((unsigned char)*p))
		p++;
	if (p == value || (*p != ':' && *p != ';') || (*p == ';' && p[1]) || strpbrk(p, "\r\n"))
		return FOPT_BAD;
	return strings_add(&o->headers, value) ? FOPT_NOMEM : FOPT_OK;
}

/* USER:PASSWORD, with a user. */
static enum fopt_result parse_user(struct file_opts *o, const struct fopt *d, const char *value,
                                   char *err, size_t errlen)
{
	char *dup;

	if (value[0] == ':' || !strchr(value, ':') || strpbrk(value, "\r\n"))
		return FOPT_BAD;
	dup = strdup(value);
	if (!dup)
		return FOPT_NOMEM;
	free(o->userpwd);
	o->userpwd = dup;
	return FOPT_OK;
}

/* A string field, checked by @ok (NULL: any non-empty value). */
static enum fopt_result set_string_field(struct file_opts *o, const struct fopt *d,
                                         const char *value, bool ok)
{
	char *dup;

	if (!*value || !ok)
		return FOPT_BAD;
	dup = strdup(value);
	if (!dup)
		return FOPT_NOMEM;
	char **field = (char **)((char *)o + d->field);
	free(*field);
	*field = dup;
	return FOPT_OK;
}

/* Printable, no spaces: a value that goes to libcurl as one word. */
static bool is_word(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	}
	return true;
}

/*
 * --proxy=URL: http:// or https:// with a host (and maybe user:password@
 * and a port). Other schemes (socks5://...) are refused: the shared cache
 * tier this is for is an HTTP proxy, and a typo must not silently fall
 * back to a direct connection.
 */
static enum fopt_result parse_proxy(struct file_opts *o, const struct fopt *d, const char *value,
                                    char *err, size_t errlen)
{
	size_t n = url_scheme_len(value);

	bool ok = n && !strncasecmp(value, "http", 4) && !strncmp(value + n, "://", 3) &&
	          url_has_host(value + n + 3) && is_word(value);

	return set_string_field(o, d, value, ok);
}

/* --noproxy=LIST: curl's list of hosts, domains and addresses reached
 * directly ("*": all), comma-separated. */
static enum fopt_result parse_noproxy(struct file_opts *o, const struct fopt *d, const char *value,
                                      char *err, size_t errlen)
{
	return set_string_field(o, d, value, is_word(value));
}

/* region=REGION: a name like eu-west-1 (it goes into a host name and the
 * signature's scope). */
static enum fopt_result parse_region(struct file_opts *o, const struct fopt *d, const char *value,
                                     char *err, size_t errlen)
{
	return set_string_field(o, d, value, s3_region_ok(value));
}

/* endpoint-url=URL: http(s)://HOST[:PORT][/PATH]. */
static enum fopt_result parse_endpoint(struct file_opts *o, const struct fopt *d, const char *value,
                                       char *err, size_t errlen)
{
	return set_string_field(o, d, value, s3_check_endpoint(value, NULL, 0) == 0);
}

/* profile=NAME: a section name of the AWS files (no brackets, no line
 * ends). */
static enum fopt_result parse_profile(struct file_opts *o, const struct fopt *d, const char *value,
                                      char *err, size_t errlen)
{
	return set_string_field(o, d, value, !strpbrk(value, "[]\r\n"));
}

/* ---- the options ---- */

#define FIELD(f) offsetof(struct file_opts, f)

static const struct keyword start_words[] = {
    {"access", START_ACCESS}, {"mount", START_MOUNT}, {NULL, 0}};
static const struct keyword read_words[] = {
    {"full", READ_FULL}, {"partial", READ_PARTIAL}, {NULL, 0}};
static const struct keyword bool_words[] = {{"true", 1}, {"yes", 1},   {"on", 1},
                                            {"1", 1},    {"false", 0}, {"no", 0},
                                            {"off", 0},  {"0", 0},     {NULL, 0}};
static const struct keyword fill_words[] = {
    {"all", FILL_ALL}, {"ondemand", FILL_ONDEMAND}, {NULL, 0}};

const struct fopt fopts[FO_COUNT] = {
    [FO_SIZE] = {.name = "size",
                 .expect = "auto, wait or a byte count (e.g. 1048576, 512K, 4GiB)",
                 .parse = parse_size},
    [FO_START] = {.name = "start",
                  .expect = "access or mount",
                  .parse = parse_keyword,
                  .field = FIELD(start),
                  .words = start_words},
    [FO_READ] = {.name = "read",
                 .expect = "full or partial",
                 .parse = parse_keyword,
                 .field = FIELD(read),
                 .words = read_words},
    [FO_FILL] = {.name = "fill",
                 .expect = "all or ondemand",
                 .parse = parse_keyword,
                 .field = FIELD(fill),
                 .words = fill_words},
    [FO_HEADER] = {.name = "header",
                   .expect = "'Name: value'",
                   .parse = parse_header,
                   .repeat = true,
                   .secret = true},
    [FO_INSECURE] = {.name = "insecure",
                     .expect = "true or false",
                     .parse = parse_flag,
                     .field = FIELD(insecure),
                     .words = bool_words,
                     .flag = true},
    [FO_RETRIES] = {.name = "retries",
                    .expect = "a whole number >= 0",
                    .parse = parse_count,
                    .field = FIELD(retries)},
    [FO_RETRY_TIME] = {.name = "retry-time",
                       .expect = EXPECT_SECONDS,
                       .parse = parse_seconds,
                       .field = FIELD(retry_time)},
    [FO_STALL_TIMEOUT] = {.name = "stall-timeout",
                          .expect = EXPECT_SECONDS,
                          .parse = parse_seconds,
                          .field = FIELD(stall_timeout)},
    [FO_CONNECT_TIMEOUT] = {.name = "connect-timeout",
                            .expect = EXPECT_SECONDS,
                            .parse = parse_seconds,
                            .field = FIELD(connect_timeout)},
    [FO_MAX_REDIRS] = {.name = "max-redirs",
                       .expect = "a whole number >= 0",
                       .parse = parse_count,
                       .field = FIELD(max_redirs)},
    [FO_USER] = {.name = "user",
                 .expect = "USER:PASSWORD",
                 .parse = parse_user,
                 .secret = true,
                 .hidden = true},
    [FO_LOCATION_TRUSTED] = {.name = "location-trusted",
                             .expect = "true or false",
                             .parse = parse_flag,
                             .field = FIELD(location_trusted),
                             .words = bool_words,
                             .flag = true},
    [FO_NETRC] = {.name = "netrc",
                  .expect = "true or false",
                  .parse = parse_flag,
                  .field = FIELD(netrc),
                  .words = bool_words,
                  .flag = true},
    [FO_NETRC_FILE] = {.name = "netrc-file", .parse = parse_netrc_file, .path = true},
    [FO_KEEP] = {.name = "keep",
                 .expect = "a byte count above 0 (e.g. 64M, 1GiB)",
                 .parse = parse_keep},
    [FO_PROXY] = {.name = "proxy",
                  .expect = "an http:// or https:// URL (e.g. http://cache.lan:3128)",
                  .parse = parse_proxy,
                  .field = FIELD(proxy)},
    [FO_NOPROXY] = {.name = "noproxy",
                    .expect = "a comma-separated list of hosts without spaces (e.g. "
                              "localhost,.lan,10.0.0.0/8)",
                    .parse = parse_noproxy,
                    .field = FIELD(noproxy)},
    [FO_REGION] = {.name = "region",
                   .expect = "an AWS region name (e.g. eu-west-1)",
                   .parse = parse_region,
                   .field = FIELD(region)},
    [FO_ENDPOINT_URL] = {.name = "endpoint-url",
                         .expect = "http(s)://HOST[:PORT][/PATH], without credentials, "
                                   "query or fragment",
                         .parse = parse_endpoint,
                         .field = FIELD(endpoint_url)},
    [FO_PROFILE] = {.name = "profile",
                    .expect = "a profile name of ~/.aws/credentials or ~/.aws/config",
                    .parse = parse_profile,
                    .field = FIELD(profile)},
    [FO_FORCE_PATH_STYLE] = {.name = "force-path-style",
                             .expect = "true or false",
                             .parse = parse_flag,
                             .field = FIELD(force_path_style),
                             .words = bool_words,
                             .flag = true},
    [FO_NO_SIGN_REQUEST] = {.name = "no-sign-request",
                            .expect = "true or false",
                            .parse = parse_flag,
                            .field = FIELD(no_sign_request),
                            .words = bool_words,
                            .flag = true},
};

/* Case-insensitive, and '_' matches '-': manifests often say retry_time. */
int fopt_find(const char *key)
{
	for (int i = 0; i < FO_COUNT; i++) {
		const char *n = fopts[i].name;
		size_t k;

		for (k = 0; n[k] && key[k]; k++) {
			char c = key[k] == '_' ? '-' : (char)tolower((unsigned char)key[k]);

			if (c != n[k])
				break;
		}
		if (!n[k] && !key[k])
			return i;
	}
	return -1;
}

int fopt_set(struct file_opts *o, int id, const char *value, const char *dash, char *err,
             size_t errlen)
{
	const struct fopt *d = &fopts[id];
	char q[ESC_LEN];

	if (!value && !d->flag)
		return cfg_fail(err, errlen, "option %s%s needs a value", dash, d->name);
	if (d->path && !*value)
		return cfg_fail(err, errlen, "option %s%s needs a file name", dash, d->name);
	switch (d->parse(o, d, value, err, errlen)) {
	case FOPT_OK:
		return 0;
	case FOPT_BAD:
		if (d->hidden || (id == FO_PROXY && strchr(value, '@')))
			return cfg_fail(err, errlen, "bad %s%s value (not shown): expected %s",
			                dash, d->name, d->expect);
		return cfg_fail(err, errlen, "bad %s%s value '%s': expected %s", dash, d->name,
		                cfg_esc(q, sizeof(q), value), d->expect);
	case FOPT_TOO_LARGE:
		return cfg_fail(err, errlen, "bad %s%s value '%s': too large", dash, d->name,
		                cfg_esc(q, sizeof(q), value));
	case FOPT_NOMEM:
		return cfg_fail(err, errlen, "out of memory");
	case FOPT_SAID:
		break;
	}
	return -1;
}

int config_set_file_option(struct file_opts *o, const char *key, const char *value, char *err,
                           size_t errlen)
{
	char q[ESC_LEN];
	int id = key ? fopt_find(key) : -1;

	if (id < 0)
		return cfg_fail(err, errlen, "unknown option '%s'", cfg_esc(q, sizeof(q), key));
	return fopt_set(o, id, value, "--", err, errlen);
}
