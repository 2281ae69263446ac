/*
 * s3.c - s3://BUCKET/KEY: where the object is, how to sign for it, and
 * what an S3 error body says (contract in include/streamfs/s3.h).
 *
 * Nothing here talks to the network: an S3 object becomes a URL source
 * (url*.c) with SigV4 signing (CURLOPT_AWS_SIGV4) and two extra headers,
 * and the URL source does the rest. What this file keeps true:
 *  - the lookups follow the AWS CLI's order, so a machine set up for
 *    "aws s3 cp" reads the same objects with the same credentials;
 *  - every value from the environment or a file is checked as strictly
 *    as the command line's, so a bad AWS_REGION is one clear line, not a
 *    request to a strange host;
 *  - secrets are copied only into the target, and wiped when it is freed.
 */
#include "streamfs/s3.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define BUCKET_MAX 255
#define REGION_MAX 63
#define INI_MAX (1u << 20) /* a credentials or config file larger than this is not one */

/* ---- s3://BUCKET/KEY ---------------------------------------------------- */

static bool bucket_char(char c)
{
	return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

int s3_parse_uri(const char *uri, char **bucket, char **key, char *err, size_t errlen)
{
	if (bucket)
		*bucket = NULL;
	if (key)
		*key = NULL;
	if (strncasecmp(uri, "s3://", 5) != 0) {
		snprintf(err, errlen, "expected s3://BUCKET/KEY");
		return -1;
	}
	const char *b = uri + 5, *slash = strchr(b, '/');
	size_t blen = slash ? (size_t)(slash - b) : strlen(b);
	if (blen == 0) {
		snprintf(err, errlen, "no bucket (expected s3://BUCKET/KEY)");
		return -1;
	}
	if (blen > BUCKET_MAX) {
		snprintf(err, errlen, "bucket name longer than %d bytes", BUCKET_MAX);
		return -1;
	}
	for (size_t i = 0; i < blen; i++) {
		if (!bucket_char(b[i])) {
			snprintf(
			    err, errlen,
			    "bad bucket name: only letters, digits, '.', '-' and '_' are allowed");
			return -1;
		}
	}
	if (!slash || !slash[1]) {
		snprintf(err, errlen, "no key (expected s3://BUCKET/KEY)");
		return -1;
	}
	for (const char *p = slash + 1; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			snprintf(err, errlen, "control characters are not allowed in a key");
			return -1;
		}
	}
	char *bd = bucket ? strndup(b, blen) : NULL, *kd = key ? strdup(slash + 1) : NULL;
	if ((bucket && !bd) || (key && !kd)) {
		free(bd);
		free(kd);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (bucket)
		*bucket = bd;
	if (key)
		*key = kd;
	return 0;
}

bool s3_region_ok(const char *r)
{
	size_t n = strlen(r);
	if (n == 0 || n > REGION_MAX || r[0] == '-' || r[n - 1] == '-')
		return false;
	for (; *r; r++)
		if (!islower((unsigned char)*r) && !isdigit((unsigned char)*r) && *r != '-')
			return false;
	return true;
}

/* The parts of an endpoint URL, parsed by libcurl. All owned (curl_free). */
struct endpoint {
	char *scheme, *host, *port, *path;
};

static void endpoint_free(struct endpoint *e)
{
	curl_free(e->scheme);
	curl_free(e->host);
	curl_free(e->port);
	curl_free(e->path);
	memset(e, 0, sizeof(*e));
}

/* Parse and check @url into @e. Returns 0 or -1 with @err (if any) set. */
static int endpoint_parse(const char *url, struct endpoint *e, char *err, size_t errlen)
{
	memset(e, 0, sizeof(*e));
	if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)) {
		snprintf(err, errlen, "expected http://HOST[:PORT] or https://HOST[:PORT]");
		return -1;
	}
	const char *rest = strstr(url, "://") + 3;
	if (!*rest || *rest == '/' || *rest == ':') {
		snprintf(err, errlen, "no host");
		return -1;
	}
	if (strpbrk(url, "?#@ \t\r\n")) {
		snprintf(err, errlen, "no credentials, query, fragment or blanks allowed");
		return -1;
	}
	CURLU *h = curl_url();
	if (!h) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	CURLUcode rc = curl_url_set(h, CURLUPART_URL, url, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(h, CURLUPART_SCHEME, &e->scheme, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(h, CURLUPART_HOST, &e->host, 0);
	if (rc == CURLUE_OK && curl_url_get(h, CURLUPART_PORT, &e->port, 0) != CURLUE_OK)
		e->port = NULL;
	if (rc == CURLUE_OK)
		rc = curl_url_get(h, CURLUPART_PATH, &e->path, 0);
	curl_url_cleanup(h);
	if (rc != CURLUE_OK || !e->host || !*e->host) {
		snprintf(err, errlen, "%s", rc != CURLUE_OK ? curl_url_strerror(rc) : "no host");
		endpoint_free(e);
		return -1;
	}
	return 0;
}

int s3_check_endpoint(const char *url, char *err, size_t errlen)
{
	struct endpoint e;
	if (endpoint_parse(url, &e, err, errlen) < 0)
		return -1;
	endpoint_free(&e);
	return 0;
}

/* ---- the object's URL --------------------------------------------------- */

char *s3_encode_key(const char *key)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(key);
	char *out = malloc(n * 3 + 1), *o = out;
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
		if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~' || *p == '/') {
			*o++ = (char)*p;
		} else {
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	*o = '\0';
	return out;
}

/* Can @bucket be the first label of a host name (S3's rules for
 * virtual-hosted buckets)? */
static bool dns_bucket(const char *b)
{
	size_t n = strlen(b);
	if (n < 3 || n > 63 || !isalnum((unsigned char)b[0]) || !isalnum((unsigned char)b[n - 1]))
		return false;
	bool digits_and_dots = true;
	for (const char *p = b; *p; p++) {
		if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-' &&
		    *p != '.')
			return false;
		if (*p == '.' && (p[1] == '.' || p[1] == '-' || (p > b && p[-1] == '-')))
			return false;
		if (!isdigit((unsigned char)*p) && *p != '.')
			digits_and_dots = false;
	}
	return !digits_and_dots; /* "192.168.1.1" is not a bucket host */
}

/* A host that cannot take a bucket label in front: an IP address or
 * localhost (test servers, MinIO, s3rver). */
static bool bare_host(const char *host)
{
	if (host[0] == '[' || strcasecmp(host, "localhost") == 0)
		return true;
	for (const char *p = host; *p; p++)
		if (!isdigit((unsigned char)*p) && *p != '.')
			return false;
	return true;
}

/* The object's URL at endpoint @e. */
static char *object_url(const struct endpoint *e, const char *bucket, const char *key,
                        bool path_style)
{
	char *ekey = s3_encode_key(key), *url = NULL;
	if (!ekey)
		return NULL;
	bool https = strcasecmp(e->scheme, "https") == 0;
	if (!path_style &&
	    (!dns_bucket(bucket) || bare_host(e->host) || (https && strchr(bucket, '.'))))
		path_style = true;
	const char *base = e->path && strcmp(e->path, "/") ? e->path : "";
	size_t blen = strlen(base);
	while (blen && base[blen - 1] == '/')
		blen--;
	int r =
	    path_style
	        ? asprintf(&url, "%s://%s%s%s%.*s/%s/%s", e->scheme, e->host, e->port ? ":" : "",
	                   e->port ? e->port : "", (int)blen, base, bucket, ekey)
	        : asprintf(&url, "%s://%s.%s%s%s%.*s/%s", e->scheme, bucket, e->host,
	                   e->port ? ":" : "", e->port ? e->port : "", (int)blen, base, ekey);
	free(ekey);
	return r < 0 ? NULL : url;
}

/* ---- AWS-style INI files ------------------------------------------------ */

/* @s (length *@n) without blanks at either end. */
static const char *trim(const char *s, size_t *n)
{
	while (*n && isspace((unsigned char)*s)) {
		s++;
		(*n)--;
	}
	while (*n && isspace((unsigned char)s[*n - 1]))
		(*n)--;
	return s;
}

static bool same(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && memcmp(s, word, n) == 0;
}

int s3_ini_get(const char *text, const char *section, const char *key, char **out)
{
	bool in_section = false;
	*out = NULL;
	for (const char *line = text; *line;) {
		const char *nl = strchrnul(line, '\n');
		size_t n = (size_t)(nl - line);
		bool indented = n && (line[0] == ' ' || line[0] == '\t');
		const char *s = trim(line, &n);
		const char *next = *nl ? nl + 1 : nl;
		if (n == 0 || s[0] == '#' || s[0] == ';') {
			line = next;
			continue;
		}
		if (s[0] == '[' && !indented) {
			size_t m = n;
			const char *close = memchr(s, ']', n);
			if (close) {
				m = (size_t)(close - s - 1);
				const char *name = trim(s + 1, &m);
				in_section = same(name, m, section);
			} else {
				in_section = false;
			}
		} else if (in_section && !indented) {
			/* An indented line is a nested setting ("s3 =" then
			 * "  addressing_style = path"): not a key of ours. */
			const char *eq = memchr(s, '=', n);
			if (eq) {
				size_t kn = (size_t)(eq - s), vn = n - kn - 1;
				const char *k = trim(s, &kn), *v = trim(eq + 1, &vn);
				if (same(k, kn, key)) {
					free(*out);
					*out = strndup(v, vn);
					if (!*out)
						return -1;
				}
			}
		}
		line = next;
	}
	return *out ? 1 : 0; /* the last one wins, as in Python's configparser */
}

/* The whole of file @path (NUL-terminated) in *@text; 0 if it is absent
 * or unreadable (as the AWS CLI, which skips such files), -1 without
 * memory. */
static int read_text(const char *path, char **text)
{
	*text = NULL;
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0 || len >= INI_MAX)
			break;
		if (len + 1 == cap) {
			char *b = realloc(buf, cap * 2);
			if (!b) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = b;
			cap *= 2;
		}
	}
	fclose(f);
	if (!buf)
		return -1;
	buf[len] = '\0';
	*text = buf;
	return 0;
}

/* ---- the lookups -------------------------------------------------------- */

/* What the profile says, from both files. All owned. */
struct profile {
	char *cred_text, *config_text;
	char *cred_section, *config_section;
};

static const char *env_get(s3_getenv_fn *env, const char *name)
{
	const char *v = env ? env(name) : getenv(name);
	return v && *v ? v : NULL;
}

/* ~/NAME: from HOME, or the password database. */
static char *home_file(s3_getenv_fn *env, const char *name)
{
	const char *home = env_get(env, "HOME");
	if (!home) {
		struct passwd *pw = getpwuid(getuid());
		home = pw ? pw->pw_dir : NULL;
	}
	char *path = NULL;
	if (!home || asprintf(&path, "%s/%s", home, name) < 0)
		return NULL;
	return path;
}

static int profile_load(struct profile *p, const char *name, s3_getenv_fn *env)
{
	memset(p, 0, sizeof(*p));
	const char *cf = env_get(env, "AWS_SHARED_CREDENTIALS_FILE");
	const char *gf = env_get(env, "AWS_CONFIG_FILE");
	char *cpath = cf ? strdup(cf) : home_file(env, ".aws/credentials");
	char *gpath = gf ? strdup(gf) : home_file(env, ".aws/config");
	int r = 0;
	if (cpath)
		r |= read_text(cpath, &p->cred_text);
	if (gpath)
		r |= read_text(gpath, &p->config_text);
	free(cpath);
	free(gpath);
	/* The config file writes [profile NAME], but [default] for the
	 * default profile. */
	p->cred_section = strdup(name);
	if (strcmp(name, "default") == 0)
		p->config_section = strdup("default");
	else if (asprintf(&p->config_section, "profile %s", name) < 0)
		p->config_section = NULL;
	return r < 0 || !p->cred_section || !p->config_section ? -1 : 0;
}

static void profile_free(struct profile *p)
{
	if (p->cred_text)
		explicit_bzero(p->cred_text, strlen(p->cred_text));
	free(p->cred_text);
	free(p->config_text);
	free(p->cred_section);
	free(p->config_section);
	memset(p, 0, sizeof(*p));
}

/* @key of the profile: the credentials file first, then the config file
 * (@creds_too false: the config file only). 1 found, 0 not, -1 ENOMEM. */
static int profile_get(const struct profile *p, const char *key, bool creds_too, char **out)
{
	int r = 0;
	*out = NULL;
	if (creds_too && p->cred_text)
		r = s3_ini_get(p->cred_text, p->cred_section, key, out);
	if (r == 0 && p->config_text)
		r = s3_ini_get(p->config_text, p->config_section, key, out);
	if (r == 0 && p->config_text && strcmp(p->cred_section, "default") == 0)
		r = s3_ini_get(p->config_text, "profile default", key, out);
	return r;
}

static void free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* The credentials, into @t; t->no_creds if there are none. */
static int find_credentials(const struct s3_opts *o, const struct profile *p,
                            const char *profile_name, s3_getenv_fn *env, struct s3_target *t)
{
	const char *id = env_get(env, "AWS_ACCESS_KEY_ID");
	const char *secret = env_get(env, "AWS_SECRET_ACCESS_KEY");
	const char *token = env_get(env, "AWS_SESSION_TOKEN");
	char *fid = NULL, *fsecret = NULL, *ftoken = NULL;
	int r = 0;
	/* A profile named on purpose wins over the environment's keys, as
	 * "aws --profile" does; AWS_PROFILE does not. */
	if (o->profile || !id || !secret) {
		id = secret = token = NULL;
		if (profile_get(p, "aws_access_key_id", true, &fid) < 0 ||
		    profile_get(p, "aws_secret_access_key", true, &fsecret) < 0 ||
		    profile_get(p, "aws_session_token", true, &ftoken) < 0) {
			r = -1;
			goto out;
		}
		if (fid && *fid && fsecret && *fsecret) {
			id = fid;
			secret = fsecret;
			token = ftoken && *ftoken ? ftoken : NULL;
		}
	}
	if (!id) {
		if (asprintf(&t->no_creds,
		             "no AWS credentials (AWS_ACCESS_KEY_ID, or profile '%s' in the "
		             "credentials or config file; --no-sign-request for public objects)",
		             profile_name) < 0)
			r = -1;
		goto out;
	}
	if (asprintf(&t->userpwd, "%s:%s", id, secret) < 0) {
		t->userpwd = NULL;
		r = -1;
	} else if (token && asprintf(&t->token_header, "x-amz-security-token: %s", token) < 0) {
		t->token_header = NULL;
		r = -1;
	}
out:
	free(fid);
	free_secret(fsecret);
	free_secret(ftoken);
	return r;
}

/* The first of @a, @b, @c that is set; NULL if none. */
static const char *first_of(const char *a, const char *b, const char *c)
{
	return a ? a : b ? b : c;
}

int s3_resolve(const char *uri, const struct s3_opts *o, s3_getenv_fn *env, struct s3_target *t,
               char *err, size_t errlen)
{
	char *bucket = NULL, *key = NULL, *cfg_region = NULL, *cfg_endpoint = NULL;
	char *aws_endpoint = NULL, why[160];
	struct profile p;
	struct endpoint e = {0};
	memset(t, 0, sizeof(*t));
	if (s3_parse_uri(uri, &bucket, &key, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "bad S3 URI: %s", why);
		return -1;
	}
	const char *pname = first_of(o->profile, env_get(env, "AWS_PROFILE"), "default");
	if (profile_load(&p, pname, env) < 0 || profile_get(&p, "region", false, &cfg_region) < 0 ||
	    profile_get(&p, "endpoint_url", false, &cfg_endpoint) < 0)
		goto nomem;

	const char *region =
	    first_of(o->region, env_get(env, "AWS_REGION"),
	             first_of(env_get(env, "AWS_DEFAULT_REGION"), cfg_region, "us-east-1"));
	if (!s3_region_ok(region)) {
		snprintf(err, errlen,
		         "bad AWS region '%.64s' (from %s): expected a name like eu-west-1", region,
		         o->region                            ? "--region"
		         : env_get(env, "AWS_REGION")         ? "AWS_REGION"
		         : env_get(env, "AWS_DEFAULT_REGION") ? "AWS_DEFAULT_REGION"
		                                              : "the config file");
		goto fail;
	}
	const char *endpoint =
	    first_of(o->endpoint_url, env_get(env, "AWS_ENDPOINT_URL_S3"),
	             first_of(env_get(env, "AWS_ENDPOINT_URL"), cfg_endpoint, NULL));
	if (!endpoint) {
		/* China's regions live under their own domain. */
		const char *dom = strncmp(region, "cn-", 3) ? "amazonaws.com" : "amazonaws.com.cn";
		if (asprintf(&aws_endpoint, "https://s3.%s.%s", region, dom) < 0) {
			aws_endpoint = NULL;
			goto nomem;
		}
		endpoint = aws_endpoint;
	}
	if (endpoint_parse(endpoint, &e, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "bad S3 endpoint '%.80s': %s", endpoint, why);
		goto fail;
	}
	t->url = object_url(&e, bucket, key, o->force_path_style);
	t->region = strdup(region);
	if (!t->url || !t->region)
		goto nomem;
	if (!o->no_sign_request) {
		if (find_credentials(o, &p, pname, env, t) < 0)
			goto nomem;
		if (t->userpwd && asprintf(&t->sigv4, "aws:amz:%s:s3", region) < 0) {
			t->sigv4 = NULL;
			goto nomem;
		}
	}
	int r = 0;
	goto out;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	s3_target_free(t);
	r = -1;
out:
	endpoint_free(&e);
	profile_free(&p);
	free(bucket);
	free(key);
	free(cfg_region);
	free(cfg_endpoint);
	free(aws_endpoint);
	return r;
}

void s3_target_free(struct s3_target *t)
{
	if (!t)
		return;
	free(t->url);
	free(t->region);
	free(t->sigv4);
	free_secret(t->userpwd);
	free_secret(t->token_header);
	free(t->no_creds);
	memset(t, 0, sizeof(*t));
}

/* ---- error bodies ------------------------------------------------------- */

bool s3_error_code(const char *body, size_t len, char *out, size_t size)
{
	static const char err_tag[] = "<Error>", open[] = "<Code>";
	const char *end = body + len;
	const char *e = memmem(body, len, err_tag, sizeof(err_tag) - 1);
	if (!e)
		return false;
	const char *c = memmem(e, (size_t)(end - e), open, sizeof(open) - 1);
	if (!c)
		return false;
	c += sizeof(open) - 1;
	size_t n = 0;
	while (c + n < end && (isalnum((unsigned char)c[n]) || c[n] == '.'))
		n++;
	if (n == 0 || c + n >= end || c[n] != '<' || n >= size)
		return false;
	memcpy(out, c, n);
	out[n] = '\0';
	return true;
}

/* ---- the source --------------------------------------------------------- */

struct stream *source_s3_new(struct ioloop *loop, const char *name, const char *uri,
                             const struct s3_opts *o, const struct url_opts *base,
                             struct store *store, char *err, size_t errlen)
{
	struct s3_target t;
	if (s3_resolve(uri, o, NULL, &t, err, errlen) < 0) {
		store_close(store);
		errno = EINVAL;
		return NULL;
	}
	/* The file's own headers, then ours: curl signs every header it is
	 * given, and needs x-amz-content-sha256 to sign the payload as
	 * unsigned (it does not add one itself). */
	struct url_opts uo = *base;
	size_t n = base->nheaders;
	char **headers = calloc(n + 2, sizeof(*headers));
	if (!headers) {
		s3_target_free(&t);
		store_close(store);
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if (n)
		memcpy(headers, base->headers, n * sizeof(*headers));
	static char unsigned_payload[] = "x-amz-content-sha256: UNSIGNED-PAYLOAD";
	if (t.sigv4) {
		headers[n++] = unsigned_payload;
		if (t.token_header)
			headers[n++] = t.token_header;
	}
	uo.headers = headers;
	uo.nheaders = n;
	uo.userpwd = t.userpwd;
	uo.aws_sigv4 = t.sigv4;
	uo.path_as_is = true;
	uo.fail_msg = t.no_creds;
	/* The object's URL is made here: a user:password or netrc entry of
	 * the file's options must not sign in to it another way. */
	uo.netrc = false;
	uo.netrc_file = NULL;
	struct stream *s = source_url_new(loop, name, t.url, &uo, store); /* copies uo */
	int saved = errno;
	free(headers);
	s3_target_free(&t);
	if (!s) {
		snprintf(err, errlen, "%s", strerror(saved));
		errno = saved;
	}
	return s;
}
