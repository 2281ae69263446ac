/*
 * names.c - NAME=SOURCE: file names, sources, and names that cannot both
 * exist in one mount.
 *
 * Contract in config.h and config_impl.h. What this file keeps true:
 * - A name that passes config_validate_name() is a relative path the FUSE
 *   glue can build a tree from, and prints on one line.
 * - A source is checked as far as it can be without running anything: a
 *   command is not blank, a pipe has a path, a URL has one of our schemes
 *   and a host (by our reading and by libcurl's).
 * - Clashes are found by sorting, so a mount of many files is checked in
 *   O(n log n), and the message names the two files the user wrote.
 */
#include "config_impl.h"

#include "streamfs/s3.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define NAME_MAX_TOTAL 4095
#define NAME_MAX_PART 255

static const char source_hint[] =
    "expected cmd:COMMAND, pipe:PATH, -, an http(s)/ftp(s) URL, or s3://BUCKET/KEY";

/* ---- names ---- */

int config_validate_name(const char *name, char *err, size_t errlen)
{
	char q[ESC_LEN];
	const char *p, *part;
	size_t len;

	if (!name || !*name)
		return cfg_fail(err, errlen, "empty name");
	cfg_esc(q, sizeof(q), name);
	if (strlen(name) > NAME_MAX_TOTAL)
		return cfg_fail(err, errlen, "bad name '%s': longer than %d bytes", q,
		                NAME_MAX_TOTAL);
	if (name[0] == '/')
		return cfg_fail(err, errlen, "bad name '%s': must be relative (no leading '/')", q);
	for (p = name; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return cfg_fail(err, errlen,
			                "bad name '%s': control characters are not allowed", q);
	}
	for (part = name;; part = p + 1) {
		p = strchrnul(part, '/');
		len = (size_t)(p - part);
		if (len == 0)
			return cfg_fail(err, errlen, "bad name '%s': %s", q,
			                *p ? "empty path component ('//')" : "trailing '/'");
		if ((len == 1 && part[0] == '.') || (len == 2 && part[0] == '.' && part[1] == '.'))
			return cfg_fail(err, errlen,
			                "bad name '%s': '%.*s' is not allowed as a component", q,
			                (int)len, part);
		if (len > NAME_MAX_PART)
			return cfg_fail(err, errlen,
			                "bad name '%s': a component is longer than %d bytes", q,
			                NAME_MAX_PART);
		if (!*p)
			return 0;
	}
}

/* ---- sources ---- */

static bool is_url_scheme(const char *s, size_t len)
{
	static const char *const schemes[] = {"http", "https", "ftp", "ftps"};
	size_t i;

	for (i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		if (strlen(schemes[i]) == len && !strncasecmp(s, schemes[i], len))
			return true;
	}
	return false;
}

size_t url_scheme_len(const char *s)
{
	size_t n = strcspn(s, ":");

	return s[n] == ':' && is_url_scheme(s, n) ? n : 0;
}

/*
 * The host of "scheme://[user[:pw]@]host[:port][/path]" must not be empty.
 * Checked here as well as by curl, because curl's parser is lenient with
 * "http:///path" and the like.
 */
bool url_has_host(const char *rest)
{
	size_t auth = strcspn(rest, "/?#");
	const char *at = memrchr(rest, '@', auth);
	const char *host = at ? at + 1 : rest;
	size_t hlen = auth - (size_t)(host - rest);

	if (hlen && host[0] == '[')
		return hlen > 2;
	return hlen && host[0] != ':';
}

static int check_url(const char *name, const char *src, char *err, size_t errlen)
{
	char qs[ESC_LEN], qn[ESC_LEN];
	size_t n = url_scheme_len(src);
	CURLU *u;
	CURLUcode rc;
	char *host = NULL;
	bool ok;

	cfg_esc(qs, sizeof(qs), src);
	cfg_esc(qn, sizeof(qn), name);
	if (strncmp(src + n + 1, "//", 2))
		return cfg_fail(err, errlen, "bad URL '%s' for '%s': expected %.*s://HOST/...", qs,
		                qn, (int)n, src);
	if (!url_has_host(src + n + 3))
		return cfg_fail(err, errlen, "bad URL '%s' for '%s': no host", qs, qn);
	u = curl_url();
	if (!u)
		return cfg_fail(err, errlen, "out of memory");
	rc = curl_url_set(u, CURLUPART_URL, src, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
	ok = rc == CURLUE_OK && host && *host;
	curl_free(host);
	curl_url_cleanup(u);
	if (rc == CURLUE_OUT_OF_MEMORY)
		return cfg_fail(err, errlen, "out of memory");
	if (!ok)
		return cfg_fail(err, errlen, "bad URL '%s' for '%s': %s", qs, qn,
		                rc ? curl_url_strerror(rc) : "no host");
	return 0;
}

static bool is_blank(const char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	return !*s;
}

/* The kind of @src and where its argument starts (NULL for stdin);
 * -1 with @err set if it is none of ours or has no argument. */
static int source_kind(const char *name, const char *src, const char **arg, char *err,
                       size_t errlen)
{
	char qs[ESC_LEN], qn[ESC_LEN];

	cfg_esc(qn, sizeof(qn), name);
	*arg = NULL;
	if (!*src)
		return cfg_fail(err, errlen, "empty source for '%s': %s", qn, source_hint);
	if (!strncmp(src, "cmd:", 4)) {
		*arg = src + 4;
		if (is_blank(*arg))
			return cfg_fail(err, errlen, "empty command in '%s' for '%s'",
			                cfg_esc(qs, sizeof(qs), src), qn);
		return SOURCE_CMD;
	}
	if (!strncmp(src, "pipe:", 5)) {
		*arg = src + 5;
		if (!**arg)
			return cfg_fail(err, errlen, "empty path in 'pipe:' for '%s'", qn);
		return SOURCE_PIPE;
	}
	if (!strcmp(src, "-"))
		return SOURCE_STDIN;
	if (!strncasecmp(src, "s3:", 3)) {
		char why[128];

		*arg = src;
		if (s3_parse_uri(src, NULL, NULL, why, sizeof(why)))
			return cfg_fail(err, errlen, "bad S3 URI '%s' for '%s': %s",
			                cfg_esc(qs, sizeof(qs), src), qn, why);
		return SOURCE_S3;
	}
	if (url_scheme_len(src)) {
		*arg = src;
		return check_url(name, src, err, errlen) ? -1 : SOURCE_URL;
	}
	return cfg_fail(err, errlen, "unknown source '%s' for '%s': %s",
	                cfg_esc(qs, sizeof(qs), src), qn, source_hint);
}

int parse_source(struct file_spec *f, const char *src, char *err, size_t errlen)
{
	const char *arg;
	char *source, *argdup = NULL;
	int kind = source_kind(f->name, src, &arg, err, errlen);

	if (kind < 0)
		return -1;
	source = strdup(src);
	if (arg)
		argdup = strdup(arg);
	if (!source || (arg && !argdup)) {
		free(source);
		free(argdup);
		return cfg_fail(err, errlen, "out of memory");
	}
	f->source = source;
	f->kind = (enum source_kind)kind;
	f->arg = argdup;
	return 0;
}

void config_file_spec_free(struct file_spec *f)
{
	if (!f)
		return;
	free(f->name);
	free(f->source);
	free(f->arg);
	config_file_opts_free(&f->opts);
	memset(f, 0, sizeof(*f));
}

int config_parse_file(const char *arg, const struct file_opts *defaults, struct file_spec *out,
                      char *err, size_t errlen)
{
	char q[ESC_LEN];
	struct file_opts def;
	const char *eq;

	memset(out, 0, sizeof(*out));
	if (!arg)
		return cfg_fail(err, errlen, "missing NAME=SOURCE");
	eq = strchr(arg, '=');
	if (!eq)
		return cfg_fail(err, errlen, "missing '=' in '%s': expected NAME=SOURCE",
		                cfg_esc(q, sizeof(q), arg));
	if (eq == arg)
		return cfg_fail(err, errlen, "empty name in '%s': expected NAME=SOURCE",
		                cfg_esc(q, sizeof(q), arg));
	out->name = strndup(arg, (size_t)(eq - arg));
	if (!out->name)
		return cfg_fail(err, errlen, "out of memory");
	if (config_validate_name(out->name, err, errlen))
		goto fail;
	if (parse_source(out, eq + 1, err, errlen))
		goto fail;
	if (!defaults) {
		config_file_opts_default(&def);
		defaults = &def;
	}
	if (config_file_opts_copy(&out->opts, defaults)) {
		cfg_fail(err, errlen, "out of memory");
		goto fail;
	}
	return 0;
fail:
	config_file_spec_free(out);
	return -1;
}

const char *config_source_kind_name(enum source_kind k)
{
	switch (k) {
	case SOURCE_CMD:
		return "cmd";
	case SOURCE_PIPE:
		return "pipe";
	case SOURCE_STDIN:
		return "stdin";
	case SOURCE_URL:
		return "url";
	case SOURCE_S3:
		return "s3";
	}
	return "unknown";
}

/* ---- names that clash ---- */

struct name_ref {
	const char *name;
	size_t idx;
};

/* Byte order, except that '/' sorts right after the end of the string. */
static int name_rank(unsigned char c)
{
	return c == '/' ? 1 : c ? c + 1 : 0;
}

static int name_ref_cmp(const void *a, const void *b)
{
	const struct name_ref *x = a, *y = b;
	const unsigned char *s = (const unsigned char *)x->name;
	const unsigned char *t = (const unsigned char *)y->name;

	while (*s && *s == *t) {
		s++;
		t++;
	}
	if (*s != *t)
		return name_rank(*s) - name_rank(*t);
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/*
 * Sorted so that "a/..." follows "a" directly, each clash shows up between
 * neighbours.
 */
int find_clash(size_t n, const char *(*name_of)(const void *ctx, size_t i), const void *ctx,
               struct clash *c)
{
	struct name_ref *refs, *x, *y;
	size_t i, len;
	int found = 0;

	if (n < 2)
		return 0;
	refs = calloc(n, sizeof(*refs));
	if (!refs)
		return -1;
	for (i = 0; i < n; i++)
		refs[i] = (struct name_ref){.name = name_of(ctx, i), .idx = i};
	qsort(refs, n, sizeof(*refs), name_ref_cmp);
	for (i = 0; i + 1 < n && !found; i++) {
		x = &refs[i];
		y = &refs[i + 1];
		len = strlen(x->name);
		c->dup = !strcmp(x->name, y->name);
		if (c->dup || (!strncmp(x->name, y->name, len) && y->name[len] == '/')) {
			c->first = x->idx < y->idx ? x->idx : y->idx;
			c->second = x->idx < y->idx ? y->idx : x->idx;
			found = 1;
		}
	}
	free(refs);
	return found;
}

int fail_file_and_dir(char *err, size_t errlen, const char *n1, const char *n2, const char *quote)
{
	char q1[ESC_LEN], q2[ESC_LEN];
	bool first_is_dir = strlen(n1) < strlen(n2);

	cfg_esc(q1, sizeof(q1), n1);
	cfg_esc(q2, sizeof(q2), n2);
	return cfg_fail(err, errlen, "%c%s%c can't be both a file and the directory of %c%s%c",
	                quote[0], first_is_dir ? q1 : q2, quote[1], quote[0],
	                first_is_dir ? q2 : q1, quote[1]);
}
