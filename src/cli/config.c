/*
 * config.c - the command line and the manifest, parsed into struct config.
 *
 * Contract in config.h. What this file keeps true:
 * - Nothing is printed and nothing exits: every problem becomes one line in
 *   the caller's @err buffer. User text quoted into a message goes through
 *   esc(), so a name holding a newline cannot split the line, and a huge
 *   argument cannot push the useful part out of the buffer.
 * - Every function either succeeds or leaves its output empty (or, where
 *   the header says so, unchanged); nothing leaks on any path.
 * - The manifest is parsed by libinih. Debian's inih exports tuning knobs
 *   as globals; parse_ini() sets the ones we depend on for the duration of
 *   one parse (see the comment there) and restores them.
 * - getopt_long() keeps global state (optind), so config_parse_args() is
 *   not thread-safe; it runs once, at start-up.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <ini.h>

#define NAME_MAX_TOTAL 4095
#define NAME_MAX_PART 255
#define ESC_LEN 80               /* room for one quoted value in a message */
#define SECONDS_MAX 1000000000.0 /* ~31 years: any larger value is a typo */
#define MANIFEST_LINE_MAX 65536  /* long enough for signed URLs and headers */
#define SECRET_FILE_MAX 65536    /* a --user=@FILE or --header=@FILE */

static size_t url_scheme_len(const char *s);

static const char stdin_hint[] = "to read standard input, write NAME=-";
static const char source_hint[] = "expected cmd:COMMAND, pipe:PATH, -, or an http(s)/ftp(s) URL";

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/*
 * Render @s for an error message: control bytes escaped (\n, \t, \xNN) so
 * the message stays on one line, and cut with "..." when it would not fit
 * in @size bytes (@size >= 4).
 */
static const char *esc(char *buf, size_t size, const char *s)
{
	size_t o = 0;
	char tmp[5];
	int n;

	if (!s)
		s = "(null)";
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '\n')
			n = snprintf(tmp, sizeof(tmp), "\\n");
		else if (c == '\t')
			n = snprintf(tmp, sizeof(tmp), "\\t");
		else if (c < 0x20 || c == 0x7f)
			n = snprintf(tmp, sizeof(tmp), "\\x%02x", c);
		else
			n = snprintf(tmp, sizeof(tmp), "%c", c);
		if (o + (size_t)n + 4 > size) {
			memcpy(buf + o, "...", 4);
			return buf;
		}
		memcpy(buf + o, tmp, (size_t)n);
		o += (size_t)n;
	}
	buf[o] = '\0';
	return buf;
}

/* ---- per-file options ---- */

enum fopt {
	FO_SIZE,
	FO_START,
	FO_READ,
	FO_FILL,
	FO_HEADER,
	FO_INSECURE,
	FO_RETRIES,
	FO_RETRY_TIME,
	FO_STALL_TIMEOUT,
	FO_CONNECT_TIMEOUT,
	FO_MAX_REDIRS,
	FO_USER,
	FO_LOCATION_TRUSTED,
	FO_NETRC,
	FO_NETRC_FILE,
	FO_KEEP,
	FO_COUNT
};

static const char *const fopt_names[FO_COUNT] = {
    [FO_SIZE] = "size",
    [FO_START] = "start",
    [FO_READ] = "read",
    [FO_FILL] = "fill",
    [FO_HEADER] = "header",
    [FO_INSECURE] = "insecure",
    [FO_RETRIES] = "retries",
    [FO_RETRY_TIME] = "retry-time",
    [FO_STALL_TIMEOUT] = "stall-timeout",
    [FO_CONNECT_TIMEOUT] = "connect-timeout",
    [FO_MAX_REDIRS] = "max-redirs",
    [FO_USER] = "user",
    [FO_LOCATION_TRUSTED] = "location-trusted",
    [FO_NETRC] = "netrc",
    [FO_NETRC_FILE] = "netrc-file",
    [FO_KEEP] = "keep",
};

/* Case-insensitive, and '_' matches '-': manifests often say retry_time. */
static int fopt_find(const char *key)
{
	int i;
	size_t k;

	for (i = 0; i < FO_COUNT; i++) {
		const char *n = fopt_names[i];

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

static bool fopt_is_bool(int id)
{
	return id == FO_INSECURE || id == FO_LOCATION_TRUSTED || id == FO_NETRC;
}

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
	size_t i;

	if (!o)
		return;
	for (i = 0; i < o->nheaders; i++)
		free(o->headers[i]);
	free(o->headers);
	free(o->userpwd);
	free(o->netrc_file);
	memset(o, 0, sizeof(*o));
}

int config_file_opts_copy(struct file_opts *dst, const struct file_opts *src)
{
	struct file_opts o = *src;
	size_t i;

	o.headers = NULL;
	o.nheaders = 0;
	o.userpwd = NULL;
	o.netrc_file = NULL;
	if (src->nheaders) {
		o.headers = calloc(src->nheaders + 1, sizeof(*o.headers));
		if (!o.headers)
			goto nomem;
		for (; o.nheaders < src->nheaders; o.nheaders++) {
			i = o.nheaders;
			o.headers[i] = strdup(src->headers[i]);
			if (!o.headers[i])
				goto nomem;
		}
	}
	if (src->userpwd) {
		o.userpwd = strdup(src->userpwd);
		if (!o.userpwd)
			goto nomem;
	}
	if (src->netrc_file) {
		o.netrc_file = strdup(src->netrc_file);
		if (!o.netrc_file)
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

/*
 * BYTES: digits, then optionally K, M, G or T (binary) and optionally "iB"
 * or "B"; "B" alone is fine too. Returns 0, -EINVAL or -ERANGE (beyond
 * INT64_MAX: no file can be that large, and off_t is signed).
 */
static int parse_bytes(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	unsigned shift = 0;
	const char *p = s;
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
	switch (*p) {
	case 'K':
	case 'k':
		shift = 10;
		p++;
		break;
	case 'M':
	case 'm':
		shift = 20;
		p++;
		break;
	case 'G':
	case 'g':
		shift = 30;
		p++;
		break;
	case 'T':
	case 't':
		shift = 40;
		p++;
		break;
	default:
		break;
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

/* A non-negative decimal integer up to @max, no sign, no spaces. */
static int parse_uint(const char *s, long max, int *out)
{
	long v = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		v = v * 10 + (*s - '0');
		if (v > max)
			return -1;
	}
	if (*s)
		return -1;
	*out = (int)v;
	return 0;
}

/*
 * Seconds: "30", "2.5", ".5". Parsed by hand because strtod() follows
 * LC_NUMERIC, and "2.5" must not depend on the user's locale.
 */
static int parse_seconds(const char *s, double *out)
{
	double v = 0, scale = 1;
	bool digits = false;

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

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	size_t i;

	if (!s) {
		*out = true;
		return 0;
	}
	for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (!strcasecmp(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcasecmp(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -1;
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
static bool header_ok(const char *h)
{
	const char *p = h;

	while (is_tchar((unsigned char)*p))
		p++;
	if (p == h || (*p != ':' && *p != ';'))
		return false;
	if (*p == ';' && p[1])
		return false;
	return !strpbrk(p, "\r\n");
}

/*
 * A regular file that holds credentials must be its owner's alone, as ssh
 * demands of private keys: otherwise every local user can read them.
 * Pipes (--user=@<(pass show x)) have no such mode to check. @what names
 * the file in the message ("netrc file 'x'").
 */
static int check_private(const struct stat *st, const char *what, const char *path, char *err,
                         size_t errlen)
{
	char q[ESC_LEN];

	if (!S_ISREG(st->st_mode) || !(st->st_mode & 077))
		return 0;
	return fail(err, errlen,
	            "%s '%s' holds credentials but is accessible by group or others "
	            "(mode %04o): chmod go= it",
	            what, esc(q, sizeof(q), path), (unsigned)(st->st_mode & 07777));
}

/*
 * --netrc-file: kept as an absolute path (the daemon works from "/"), and
 * checked now, with stat() only: opening a device can have effects.
 */
static int set_netrc_file(struct file_opts *o, const char *value, const char *dash, char *err,
                          size_t errlen)
{
	char q[ESC_LEN];
	struct stat st;
	char *abs;

	if (!*value)
		return fail(err, errlen, "option %snetrc-file needs a file name", dash);
	esc(q, sizeof(q), value);
	abs = realpath(value, NULL);
	if (!abs || stat(abs, &st) < 0 || access(abs, R_OK) < 0) {
		fail(err, errlen, "cannot read netrc file '%s': %s", q, strerror(errno));
		free(abs);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || check_private(&st, "netrc file", value, err, errlen)) {
		if (!S_ISREG(st.st_mode))
			fail(err, errlen, "netrc file '%s' is not a regular file", q);
		free(abs);
		return -1;
	}
	free(o->netrc_file);
	o->netrc_file = abs;
	return 0;
}

/*
 * Set option @id from @value; @dash is "--" on the command line and "" in
 * a manifest, so messages use the spelling the user wrote.
 */
static int fopt_set(struct file_opts *o, int id, const char *value, const char *dash, char *err,
                    size_t errlen)
{
	const char *name = fopt_names[id];
	char q[ESC_LEN];
	uint64_t bytes;
	char **headers;
	char *dup;
	int n, rc;
	double sec;
	bool b;

	if (!value && !fopt_is_bool(id))
		return fail(err, errlen, "option %s%s needs a value", dash, name);
	switch (id) {
	case FO_SIZE:
		if (!strcasecmp(value, "auto")) {
			o->size = SIZE_AUTO;
			o->size_bytes = 0;
			return 0;
		}
		if (!strcasecmp(value, "wait")) {
			o->size = SIZE_WAIT;
			o->size_bytes = 0;
			return 0;
		}
		rc = parse_bytes(value, &bytes);
		if (rc == -ERANGE)
			return fail(err, errlen, "bad %s%s value '%s': too large", dash, name,
			            esc(q, sizeof(q), value));
		if (rc)
			return fail(err, errlen,
			            "bad %s%s value '%s': expected auto, wait or a byte count "
			            "(e.g. 1048576, 512K, 4GiB)",
			            dash, name, esc(q, sizeof(q), value));
		o->size = SIZE_FIXED;
		o->size_bytes = bytes;
		return 0;
	case FO_START:
		if (!strcasecmp(value, "access"))
			o->start = START_ACCESS;
		else if (!strcasecmp(value, "mount"))
			o->start = START_MOUNT;
		else
			return fail(err, errlen, "bad %s%s value '%s': expected access or mount",
			            dash, name, esc(q, sizeof(q), value));
		return 0;
	case FO_READ:
		if (!strcasecmp(value, "full"))
			o->read = READ_FULL;
		else if (!strcasecmp(value, "partial"))
			o->read = READ_PARTIAL;
		else
			return fail(err, errlen, "bad %s%s value '%s': expected full or partial",
			            dash, name, esc(q, sizeof(q), value));
		return 0;
	case FO_FILL:
		if (!strcasecmp(value, "all"))
			o->fill = FILL_ALL;
		else if (!strcasecmp(value, "ondemand"))
			o->fill = FILL_ONDEMAND;
		else
			return fail(err, errlen, "bad %s%s value '%s': expected all or ondemand",
			            dash, name, esc(q, sizeof(q), value));
		return 0;
	case FO_HEADER:
		if (!header_ok(value))
			return fail(err, errlen, "bad %s%s value '%s': expected 'Name: value'",
			            dash, name, esc(q, sizeof(q), value));
		dup = strdup(value);
		if (!dup)
			return fail(err, errlen, "out of memory");
		headers = realloc(o->headers, (o->nheaders + 2) * sizeof(*headers));
		if (!headers) {
			free(dup);
			return fail(err, errlen, "out of memory");
		}
		headers[o->nheaders++] = dup;
		headers[o->nheaders] = NULL;
		o->headers = headers;
		return 0;
	case FO_INSECURE:
	case FO_LOCATION_TRUSTED:
	case FO_NETRC:
		if (parse_bool(value, &b))
			return fail(err, errlen, "bad %s%s value '%s': expected true or false",
			            dash, name, esc(q, sizeof(q), value));
		if (id == FO_INSECURE)
			o->insecure = b;
		else if (id == FO_LOCATION_TRUSTED)
			o->location_trusted = b;
		else
			o->netrc = b;
		return 0;
	case FO_NETRC_FILE:
		return set_netrc_file(o, value, dash, err, errlen);
	case FO_RETRIES:
	case FO_MAX_REDIRS:
		if (parse_uint(value, INT_MAX, &n))
			return fail(err, errlen,
			            "bad %s%s value '%s': expected a whole number >= 0", dash, name,
			            esc(q, sizeof(q), value));
		if (id == FO_RETRIES)
			o->retries = n;
		else
			o->max_redirs = n;
		return 0;
	case FO_RETRY_TIME:
	case FO_STALL_TIMEOUT:
	case FO_CONNECT_TIMEOUT:
		if (parse_seconds(value, &sec))
			return fail(err, errlen,
			            "bad %s%s value '%s': expected seconds (e.g. 30 or 2.5), "
			            "at most %.0f",
			            dash, name, esc(q, sizeof(q), value), SECONDS_MAX);
		if (id == FO_RETRY_TIME)
			o->retry_time = sec;
		else if (id == FO_STALL_TIMEOUT)
			o->stall_timeout = sec;
		else
			o->connect_timeout = sec;
		return 0;
	case FO_KEEP:
		rc = parse_bytes(value, &bytes);
		if (rc == -ERANGE)
			return fail(err, errlen, "bad %s%s value '%s': too large", dash, name,
			            esc(q, sizeof(q), value));
		if (rc || bytes == 0)
			return fail(err, errlen,
			            "bad %s%s value '%s': expected a byte count above 0 "
			            "(e.g. 64M, 1GiB)",
			            dash, name, esc(q, sizeof(q), value));
		o->keep = bytes;
		return 0;
	case FO_USER:
		/* The value is a password: keep it out of the message. */
		if (value[0] == ':' || !strchr(value, ':') || strpbrk(value, "\r\n"))
			return fail(err, errlen,
			            "bad %s%s value (not shown): expected USER:PASSWORD", dash,
			            name);
		dup = strdup(value);
		if (!dup)
			return fail(err, errlen, "out of memory");
		free(o->userpwd);
		o->userpwd = dup;
		return 0;
	}
	return fail(err, errlen, "unknown option %s%s", dash, name);
}

int config_set_file_option(struct file_opts *o, const char *key, const char *value, char *err,
                           size_t errlen)
{
	char q[ESC_LEN];
	int id = key ? fopt_find(key) : -1;

	if (id < 0)
		return fail(err, errlen, "unknown option '%s'", esc(q, sizeof(q), key));
	return fopt_set(o, id, value, "--", err, errlen);
}

/* ---- secrets: @FILE values, and wiping argv ---- */

/* Read at most SECRET_FILE_MAX bytes of @fd into a new NUL-terminated buffer. */
static char *slurp(int fd, const char *path, char *err, size_t errlen)
{
	char q[ESC_LEN];
	char *buf = malloc(SECRET_FILE_MAX + 1);
	size_t len = 0;
	ssize_t n;

	if (!buf) {
		fail(err, errlen, "out of memory");
		return NULL;
	}
	while (len <= SECRET_FILE_MAX &&
	       (n = read(fd, buf + len, SECRET_FILE_MAX + 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail(err, errlen, "cannot read '%s': %s", esc(q, sizeof(q), path),
			     strerror(errno));
			goto bad;
		}
		len += (size_t)n;
	}
	if (len > SECRET_FILE_MAX) {
		fail(err, errlen, "'%s' is longer than %d bytes", esc(q, sizeof(q), path),
		     SECRET_FILE_MAX);
		goto bad;
	}
	if (memchr(buf, '\0', len)) {
		fail(err, errlen, "NUL byte in '%s'", esc(q, sizeof(q), path));
		goto bad;
	}
	buf[len] = '\0';
	return buf;
bad:
	explicit_bzero(buf, SECRET_FILE_MAX + 1);
	free(buf);
	return NULL;
}

/*
 * The contents of @path for --user=@FILE/--header=@FILE, a regular file
 * (mode checked) or a pipe; not a device, whose open alone can have
 * effects. Wipe it with explicit_bzero() before free().
 */
static char *read_secret_file(const char *path, char *err, size_t errlen)
{
	char q[ESC_LEN];
	struct stat st;
	char *buf;
	int fd;

	esc(q, sizeof(q), path);
	if (stat(path, &st) < 0) {
		fail(err, errlen, "cannot read '%s': %s", q, strerror(errno));
		return NULL;
	}
	if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
		fail(err, errlen, "'%s' is not a regular file or a pipe", q);
		return NULL;
	}
	/* Not blocking on a FIFO without a writer; a pipe's reads still wait. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, 0) < 0) {
		fail(err, errlen, "cannot read '%s': %s", q, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	buf = check_private(&st, "file", path, err, errlen) ? NULL : slurp(fd, path, err, errlen);
	close(fd);
	return buf;
}

/* Move what @t holds for option @id (user, header) into @o. */
static int fopt_take(struct file_opts *o, struct file_opts *t, int id)
{
	char **headers;

	if (id == FO_USER) {
		free(o->userpwd);
		o->userpwd = t->userpwd;
		t->userpwd = NULL;
		return 0;
	}
	headers = realloc(o->headers, (o->nheaders + t->nheaders + 1) * sizeof(*headers));
	if (!headers)
		return -1;
	memcpy(headers + o->nheaders, t->headers, t->nheaders * sizeof(*headers));
	o->headers = headers;
	o->nheaders += t->nheaders;
	headers[o->nheaders] = NULL;
	t->nheaders = 0;
	return 0;
}

/*
 * --user=@FILE (one line, USER:PASSWORD) or --header=@FILE (one header per
 * line); blank lines are skipped, CR LF is fine. Messages never quote the
 * file's text. On failure @o is unchanged.
 */
static int fopt_set_file(struct file_opts *o, int id, const char *path, const char *dash, char *err,
                         size_t errlen)
{
	const char *name = fopt_names[id];
	size_t lineno = 0, len, total;
	char q[ESC_LEN], msg[160];
	char *buf, *line, *next;
	struct file_opts t;
	int rc = 0;

	if (!*path)
		return fail(err, errlen, "option %s%s=@ needs a file name", dash, name);
	buf = read_secret_file(path, err, errlen);
	if (!buf)
		return -1;
	esc(q, sizeof(q), path);
	total = strlen(buf);
	config_file_opts_default(&t);
	for (line = buf; !rc && *line; line = next) {
		next = line + strcspn(line, "\n");
		if (*next)
			*next++ = '\0';
		lineno++;
		len = strlen(line);
		if (len && line[len - 1] == '\r')
			line[len - 1] = '\0';
		if (!line[strspn(line, " \t")])
			continue;
		if (id == FO_USER && t.userpwd)
			rc = fail(err, errlen, "'%s': more than one line for %s%s", q, dash, name);
		else if (fopt_set(&t, id, line, dash, msg, sizeof(msg)))
			rc = fail(err, errlen, "'%s' line %zu (not shown): expected %s", q, lineno,
			          id == FO_USER ? "USER:PASSWORD" : "'Name: value'");
	}
	if (!rc && !t.userpwd && !t.nheaders)
		rc = fail(err, errlen, "'%s' is empty: expected %s", q,
		          id == FO_USER ? "USER:PASSWORD" : "'Name: value' lines");
	if (!rc && fopt_take(o, &t, id))
		rc = fail(err, errlen, "out of memory");
	config_file_opts_free(&t);
	explicit_bzero(buf, total);
	free(buf);
	return rc;
}

/* The command line and the manifest: a value "@FILE" of user or header
 * names a file holding it. */
static int fopt_set_arg(struct file_opts *o, int id, const char *value, const char *dash, char *err,
                        size_t errlen)
{
	if ((id == FO_USER || id == FO_HEADER) && value && value[0] == '@')
		return fopt_set_file(o, id, value + 1, dash, err, errlen);
	return fopt_set(o, id, value, dash, err, errlen);
}

/* Where the password of "scheme://user:password@host..." is: false if none. */
static bool url_password(const char *url, size_t *off, size_t *len)
{
	const char *auth = strstr(url, "://"), *at, *colon;
	size_t alen;

	if (!auth || !url_scheme_len(url))
		return false;
	auth += 3;
	alen = strcspn(auth, "/?#");
	at = memrchr(auth, '@', alen);
	colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	if (!colon || colon + 1 == at)
		return false;
	*off = (size_t)(colon + 1 - url);
	*len = (size_t)(at - colon - 1);
	return true;
}

/*
 * Overwrite, in an argv string, the secret that option @id (or, for -1, a
 * NAME=SOURCE) carries: what follows the ':' of --user, the value of a
 * --header, the password of a URL. '*' rather than NUL, so that ps shows
 * that something was hidden there. An @FILE value is a path: kept.
 */
static void scrub_arg(int id, char *value)
{
	size_t off, len;
	char *p;

	if (!value || value[0] == '@')
		return;
	if (id == FO_USER && (p = strchr(value, ':'))) {
		memset(p + 1, '*', strlen(p + 1));
	} else if (id == FO_HEADER && *(p = value + strcspn(value, ":;")) == ':') {
		p += 1 + strspn(p + 1, " \t");
		memset(p, '*', strlen(p));
	} else if (id < 0 && (p = strchr(value, '=')) && url_password(p + 1, &off, &len)) {
		memset(p + 1 + off, '*', len);
	}
}

/* ---- names and sources ---- */

int config_validate_name(const char *name, char *err, size_t errlen)
{
	char q[ESC_LEN];
	const char *p, *part;
	size_t len;

	if (!name || !*name)
		return fail(err, errlen, "empty name");
	esc(q, sizeof(q), name);
	if (strlen(name) > NAME_MAX_TOTAL)
		return fail(err, errlen, "bad name '%s': longer than %d bytes", q, NAME_MAX_TOTAL);
	if (name[0] == '/')
		return fail(err, errlen, "bad name '%s': must be relative (no leading '/')", q);
	for (p = name; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return fail(err, errlen,
			            "bad name '%s': control characters are not allowed", q);
	}
	for (part = name;; part = p + 1) {
		p = strchrnul(part, '/');
		len = (size_t)(p - part);
		if (len == 0)
			return fail(err, errlen, "bad name '%s': %s", q,
			            *p ? "empty path component ('//')" : "trailing '/'");
		if ((len == 1 && part[0] == '.') || (len == 2 && part[0] == '.' && part[1] == '.'))
			return fail(err, errlen,
			            "bad name '%s': '%.*s' is not allowed as a component", q,
			            (int)len, part);
		if (len > NAME_MAX_PART)
			return fail(err, errlen,
			            "bad name '%s': a component is longer than %d bytes", q,
			            NAME_MAX_PART);
		if (!*p)
			return 0;
	}
}

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

/* Length of the scheme if @s starts with one of ours and ':', else 0. */
static size_t url_scheme_len(const char *s)
{
	size_t n = strcspn(s, ":");

	return s[n] == ':' && is_url_scheme(s, n) ? n : 0;
}

/*
 * The host of "scheme://[user[:pw]@]host[:port][/path]" must not be empty.
 * Checked here as well as by curl, because curl's parser is lenient with
 * "http:///path" and the like.
 */
static bool url_has_host(const char *rest)
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

	esc(qs, sizeof(qs), src);
	esc(qn, sizeof(qn), name);
	if (strncmp(src + n + 1, "//", 2))
		return fail(err, errlen, "bad URL '%s' for '%s': expected %.*s://HOST/...", qs, qn,
		            (int)n, src);
	if (!url_has_host(src + n + 3))
		return fail(err, errlen, "bad URL '%s' for '%s': no host", qs, qn);
	u = curl_url();
	if (!u)
		return fail(err, errlen, "out of memory");
	rc = curl_url_set(u, CURLUPART_URL, src, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
	ok = rc == CURLUE_OK && host && *host;
	curl_free(host);
	curl_url_cleanup(u);
	if (rc == CURLUE_OUT_OF_MEMORY)
		return fail(err, errlen, "out of memory");
	if (!ok)
		return fail(err, errlen, "bad URL '%s' for '%s': %s", qs, qn,
		            rc ? curl_url_strerror(rc) : "no host");
	return 0;
}

static bool is_blank(const char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	return !*s;
}

/*
 * Check @src and set f->source, f->kind and f->arg; @f->name (validated)
 * names the file in messages. On failure @f is unchanged.
 */
static int parse_source(struct file_spec *f, const char *src, char *err, size_t errlen)
{
	char qs[ESC_LEN], qn[ESC_LEN];
	enum source_kind kind;
	const char *arg = NULL;
	char *source, *argdup = NULL;

	esc(qn, sizeof(qn), f->name);
	if (!*src)
		return fail(err, errlen, "empty source for '%s': %s", qn, source_hint);
	if (!strncmp(src, "cmd:", 4)) {
		kind = SOURCE_CMD;
		arg = src + 4;
		if (is_blank(arg))
			return fail(err, errlen, "empty command in '%s' for '%s'",
			            esc(qs, sizeof(qs), src), qn);
	} else if (!strncmp(src, "pipe:", 5)) {
		kind = SOURCE_PIPE;
		arg = src + 5;
		if (!*arg)
			return fail(err, errlen, "empty path in 'pipe:' for '%s'", qn);
	} else if (!strcmp(src, "-")) {
		kind = SOURCE_STDIN;
	} else if (url_scheme_len(src)) {
		kind = SOURCE_URL;
		arg = src;
		if (check_url(f->name, src, err, errlen))
			return -1;
	} else {
		return fail(err, errlen, "unknown source '%s' for '%s': %s",
		            esc(qs, sizeof(qs), src), qn, source_hint);
	}
	source = strdup(src);
	if (arg)
		argdup = strdup(arg);
	if (!source || (arg && !argdup)) {
		free(source);
		free(argdup);
		return fail(err, errlen, "out of memory");
	}
	f->source = source;
	f->kind = kind;
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
		return fail(err, errlen, "missing NAME=SOURCE");
	eq = strchr(arg, '=');
	if (!eq)
		return fail(err, errlen, "missing '=' in '%s': expected NAME=SOURCE",
		            esc(q, sizeof(q), arg));
	if (eq == arg)
		return fail(err, errlen, "empty name in '%s': expected NAME=SOURCE",
		            esc(q, sizeof(q), arg));
	out->name = strndup(arg, (size_t)(eq - arg));
	if (!out->name)
		return fail(err, errlen, "out of memory");
	if (config_validate_name(out->name, err, errlen))
		goto fail;
	if (parse_source(out, eq + 1, err, errlen))
		goto fail;
	if (!defaults) {
		config_file_opts_default(&def);
		defaults = &def;
	}
	if (config_file_opts_copy(&out->opts, defaults)) {
		fail(err, errlen, "out of memory");
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
	}
	return "unknown";
}

/* ---- duplicate and file/directory clashes ---- */

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
 * Find two names that cannot both exist: equal ones, or "a" and "a/b" (a
 * file can't also be a directory). Sorted so that "a/..." follows "a"
 * directly, each clash shows up between neighbours. Returns 0 if none, 1
 * with *first < *second (indexes into @names) if one, -1 on ENOMEM.
 */
static int find_clash(const char *const *names, size_t n, size_t *first, size_t *second, bool *dup)
{
	struct name_ref *refs;
	size_t i, len;
	int found = 0;

	if (n < 2)
		return 0;
	refs = calloc(n, sizeof(*refs));
	if (!refs)
		return -1;
	for (i = 0; i < n; i++) {
		refs[i].name = names[i];
		refs[i].idx = i;
	}
	qsort(refs, n, sizeof(*refs), name_ref_cmp);
	for (i = 0; i + 1 < n && !found; i++) {
		len = strlen(refs[i].name);
		*dup = !strcmp(refs[i].name, refs[i + 1].name);
		if (*dup || (!strncmp(refs[i].name, refs[i + 1].name, len) &&
		             refs[i + 1].name[len] == '/')) {
			*first = refs[i].idx < refs[i + 1].idx ? refs[i].idx : refs[i + 1].idx;
			*second = refs[i].idx < refs[i + 1].idx ? refs[i + 1].idx : refs[i].idx;
			found = 1;
		}
	}
	free(refs);
	return found;
}

/* ---- manifest ---- */

/*
 * Parsing state. inih reads through mf_read(), which hands it one line at a
 * time from our own buffer: so we know the line number (Debian's inih is
 * built without INI_HANDLER_LINENO), we see every section header in full
 * (inih cuts section names at 49 bytes and does not report sections without
 * keys), and we refuse what inih would silently mangle (NUL bytes, lines
 * longer than its buffer).
 */
struct manifest {
	FILE *f;
	const char *path;
	int lineno; /* line being handed to inih */
	char *line; /* its bytes, NUL-terminated */
	size_t len; /* its length */
	size_t pos; /* bytes already handed over */
	size_t cap;

	struct file_spec *files; /* one per section, in order */
	int *lines;              /* line of each section header */
	unsigned *seen;          /* keys given per section, bit (1 << fopt), source = bit 31 */
	size_t nfiles, capfiles;

	bool secrets; /* a user, header or URL password written in the file itself */
	bool failed;  /* err holds the message */
	char *err;
	size_t errlen;
};

#define SEEN_SOURCE (1u << 31)

__attribute__((format(printf, 3, 4))) static int mf_fail(struct manifest *m, int line,
                                                         const char *fmt, ...)
{
	char msg[512], qp[ESC_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!m->failed)
		fail(m->err, m->errlen, "%s:%d: %s", esc(qp, sizeof(qp), m->path), line, msg);
	m->failed = true;
	return -1;
}

/* The section before a new header (or EOF) must have had a source. */
static int mf_end_section(struct manifest *m)
{
	char q[ESC_LEN];
	struct file_spec *f;

	if (!m->nfiles || m->files[m->nfiles - 1].source)
		return 0;
	f = &m->files[m->nfiles - 1];
	return mf_fail(m, m->lines[m->nfiles - 1], "no 'source' key in [%s]",
	               esc(q, sizeof(q), f->name));
}

static int mf_grow(struct manifest *m)
{
	size_t cap = m->capfiles ? m->capfiles * 2 : 8;
	struct file_spec *files;
	unsigned *seen;
	int *lines;

	files = realloc(m->files, cap * sizeof(*files));
	if (!files)
		return -1;
	m->files = files;
	lines = realloc(m->lines, cap * sizeof(*lines));
	if (!lines)
		return -1;
	m->lines = lines;
	seen = realloc(m->seen, cap * sizeof(*seen));
	if (!seen)
		return -1;
	m->seen = seen;
	m->capfiles = cap;
	return 0;
}

/*
 * If the current line is a section header, as inih will read it (first
 * non-blank byte '[', up to the first ']'), start a new file. A line with
 * '[' and no ']' is left for inih to report as a syntax error.
 */
static int mf_section(struct manifest *m)
{
	char q[ESC_LEN], msg[384];
	const char *s = m->line, *end, *p;
	struct file_spec *f;

	if (m->lineno == 1 && !memcmp(s, "\xEF\xBB\xBF", 3))
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	if (*s != '[')
		return 0;
	end = strchr(s + 1, ']');
	if (!end)
		return 0;
	for (p = end + 1; isspace((unsigned char)*p); p++)
		;
	if (*p && *p != ';' && *p != '#') {
		snprintf(msg, sizeof(msg), "%.*s", (int)strcspn(p, "\r\n"), p);
		return mf_fail(m, m->lineno, "unexpected text after ']': '%s'",
		               esc(q, sizeof(q), msg));
	}
	if (mf_end_section(m))
		return -1;
	if (m->nfiles == m->capfiles && mf_grow(m))
		return mf_fail(m, m->lineno, "out of memory");
	f = &m->files[m->nfiles];
	memset(f, 0, sizeof(*f));
	f->name = strndup(s + 1, (size_t)(end - s - 1));
	if (!f->name)
		return mf_fail(m, m->lineno, "out of memory");
	config_file_opts_default(&f->opts);
	m->lines[m->nfiles] = m->lineno;
	m->seen[m->nfiles] = 0;
	m->nfiles++;
	if (!strcmp(f->name, "streamfs"))
		return mf_fail(m, m->lineno, "section [streamfs] is reserved");
	if (config_validate_name(f->name, msg, sizeof(msg)))
		return mf_fail(m, m->lineno, "%s", msg);
	return 0;
}

/* Read the next raw line into m->line. Returns 1, 0 at EOF, -1 on error. */
static int mf_next_line(struct manifest *m)
{
	char q[ESC_LEN];
	char *grown;
	int c;

	m->len = 0;
	m->pos = 0;
	while ((c = getc_unlocked(m->f)) != EOF) {
		if (m->len == MANIFEST_LINE_MAX)
			return mf_fail(m, m->lineno + 1, "line longer than %d bytes",
			               MANIFEST_LINE_MAX);
		if (m->len + 2 > m->cap) {
			grown = realloc(m->line, m->cap ? m->cap * 2 : 256);
			if (!grown)
				return mf_fail(m, m->lineno + 1, "out of memory");
			m->line = grown;
			m->cap = m->cap ? m->cap * 2 : 256;
		}
		if (c == '\0')
			return mf_fail(m, m->lineno + 1, "NUL byte in line");
		m->line[m->len++] = (char)c;
		if (c == '\n')
			break;
	}
	if (ferror(m->f)) {
		/* EISDIR and friends: fopen() succeeds on a directory. */
		fail(m->err, m->errlen, "cannot read manifest '%s': %s", esc(q, sizeof(q), m->path),
		     strerror(errno));
		m->failed = true;
		return -1;
	}
	if (!m->len)
		return 0;
	m->line[m->len] = '\0';
	m->lineno++;
	return mf_section(m) ? -1 : 1;
}

/* An fgets() for inih: the current line, in pieces if its buffer is short. */
static char *mf_read(char *str, int num, void *stream)
{
	struct manifest *m = stream;
	size_t n;

	if (m->failed || num < 2)
		return NULL;
	if (m->pos == m->len && mf_next_line(m) <= 0)
		return NULL;
	n = m->len - m->pos;
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, m->line + m->pos, n);
	str[n] = '\0';
	m->pos += n;
	return str;
}

static int mf_handler(void *user, const char *section, const char *key, const char *value)
{
	struct manifest *m = user;
	char qk[ESC_LEN], qn[ESC_LEN], msg[384];
	struct file_spec *f;
	size_t off, len;
	unsigned bit;
	int id = -1;

	if (m->failed)
		return 0;
	if (!m->nfiles)
		return !mf_fail(m, m->lineno, "key '%s' outside of any [section]",
		                esc(qk, sizeof(qk), key));
	f = &m->files[m->nfiles - 1];
	/* inih's copy of the name is cut short; ours must start the same. */
	if (strncmp(f->name, section, strlen(section)))
		return !mf_fail(m, m->lineno, "cannot parse the section header");
	esc(qn, sizeof(qn), f->name);
	if (!strcasecmp(key, "source")) {
		bit = SEEN_SOURCE;
	} else {
		id = fopt_find(key);
		if (id < 0)
			return !mf_fail(m, m->lineno, "unknown key '%s' in [%s]",
			                esc(qk, sizeof(qk), key), qn);
		bit = id == FO_HEADER ? 0 : 1u << id;
	}
	if (m->seen[m->nfiles - 1] & bit)
		return !mf_fail(m, m->lineno, "key '%s' given twice in [%s]",
		                esc(qk, sizeof(qk), key), qn);
	if (bit == SEEN_SOURCE ? parse_source(f, value, msg, sizeof(msg))
	                       : fopt_set_arg(&f->opts, id, value, "", msg, sizeof(msg)))
		return !mf_fail(m, m->lineno, "[%s]: %s", qn, msg);
	m->seen[m->nfiles - 1] |= bit;
	if (bit == SEEN_SOURCE)
		m->secrets |= f->kind == SOURCE_URL && url_password(value, &off, &len);
	else
		m->secrets |= (id == FO_USER || id == FO_HEADER) && value[0] != '@';
	return 1;
}

/*
 * Run inih over @m. Debian's inih (55-1) makes its build options run-time
 * globals; we need, for this parse only:
 * - no inline comments: "cmd:a ; b" is a command, not "cmd:a" and a comment;
 * - no multi-line values: an indented "key = value" is a key (and section
 *   headers are then exactly the lines mf_section() recognises);
 * - a heap line buffer that grows to MANIFEST_LINE_MAX (default: 200 bytes,
 *   and a longer line would be split into two);
 * - stop at the first error (ours is the one reported).
 */
static int parse_ini(struct manifest *m)
{
	bool multiline = ini_allow_multiline, inline_comments = ini_allow_inline_comments;
	bool use_stack = ini_use_stack, allow_realloc = ini_allow_realloc;
	bool stop = ini_stop_on_first_error, no_value = ini_allow_no_value;
	int max_line = ini_max_line, rc;

	ini_allow_multiline = false;
	ini_allow_inline_comments = false;
	ini_use_stack = false;
	ini_allow_realloc = true;
	ini_max_line = MANIFEST_LINE_MAX + 16;
	ini_stop_on_first_error = true;
	ini_allow_no_value = false;
	rc = ini_parse_stream(mf_read, m, mf_handler, m);
	ini_allow_multiline = multiline;
	ini_allow_inline_comments = inline_comments;
	ini_use_stack = use_stack;
	ini_allow_realloc = allow_realloc;
	ini_max_line = max_line;
	ini_stop_on_first_error = stop;
	ini_allow_no_value = no_value;
	return rc;
}

static void mf_free(struct manifest *m)
{
	size_t i;

	for (i = 0; i < m->nfiles; i++)
		config_file_spec_free(&m->files[i]);
	free(m->files);
	free(m->lines);
	free(m->seen);
	free(m->line);
	if (m->f)
		fclose(m->f);
}

/* Names already in @cfg and the manifest's must not clash. */
static int mf_check_names(struct manifest *m, const struct config *cfg)
{
	char q1[ESC_LEN], q2[ESC_LEN];
	size_t n = cfg->nfiles + m->nfiles, i, a, b;
	const char **names, *n1, *n2;
	bool dup;
	int rc;

	names = calloc(n ? n : 1, sizeof(*names));
	if (!names)
		return mf_fail(m, 0, "out of memory");
	for (i = 0; i < cfg->nfiles; i++)
		names[i] = cfg->files[i].name;
	for (i = 0; i < m->nfiles; i++)
		names[cfg->nfiles + i] = m->files[i].name;
	rc = find_clash(names, n, &a, &b, &dup);
	free(names);
	if (rc < 0)
		return mf_fail(m, 0, "out of memory");
	if (!rc)
		return 0;
	/* b > a, so b is from this manifest. */
	n1 = a < cfg->nfiles ? cfg->files[a].name : m->files[a - cfg->nfiles].name;
	n2 = m->files[b - cfg->nfiles].name;
	esc(q1, sizeof(q1), n1);
	esc(q2, sizeof(q2), n2);
	if (dup && a >= cfg->nfiles)
		return mf_fail(m, m->lines[b - cfg->nfiles],
		               "duplicate section [%s] (first at line %d)", q2,
		               m->lines[a - cfg->nfiles]);
	if (dup)
		return mf_fail(m, m->lines[b - cfg->nfiles], "duplicate name [%s]", q2);
	/* The shorter name is the one that would have to be a directory. */
	return mf_fail(m, m->lines[b - cfg->nfiles],
	               "[%s] can't be both a file and the directory of [%s]",
	               strlen(n1) < strlen(n2) ? q1 : q2, strlen(n1) < strlen(n2) ? q2 : q1);
}

/* Credentials written in the manifest: the file must be its owner's alone. */
static int mf_check_private(struct manifest *m)
{
	char msg[ESC_LEN + 160];
	struct stat st;

	if (!m->secrets)
		return 0;
	if (fstat(fileno(m->f), &st) < 0) {
		fail(m->err, m->errlen, "cannot read manifest: %s", strerror(errno));
		m->failed = true;
		return -1;
	}
	if (!check_private(&st, "manifest", m->path, msg, sizeof(msg)))
		return 0;
	/* "...: chmod go= it, or move them to files: user = @FILE, header = @FILE" */
	fail(m->err, m->errlen, "%s, or give them as user = @FILE, header = @FILE", msg);
	m->failed = true;
	return -1;
}

int config_load_manifest(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct manifest m = {.path = path, .err = err, .errlen = errlen};
	char q[ESC_LEN];
	struct file_spec *files;
	int rc;

	if (!path || !*path)
		return fail(err, errlen, "empty manifest file name");
	m.f = fopen(path, "re");
	if (!m.f)
		return fail(err, errlen, "cannot read manifest '%s': %s", esc(q, sizeof(q), path),
		            strerror(errno));
	rc = parse_ini(&m);
	if (m.failed)
		goto fail;
	if (rc == -2) {
		mf_fail(&m, m.lineno, "out of memory");
		goto fail;
	}
	if (rc) {
		mf_fail(&m, rc, "syntax error: expected [NAME] or KEY = VALUE");
		goto fail;
	}
	if (mf_end_section(&m) || mf_check_names(&m, cfg) || mf_check_private(&m))
		goto fail;
	if (m.nfiles) {
		files = realloc(cfg->files, (cfg->nfiles + m.nfiles) * sizeof(*files));
		if (!files) {
			fail(err, errlen, "out of memory");
			goto fail;
		}
		memcpy(files + cfg->nfiles, m.files, m.nfiles * sizeof(*files));
		cfg->files = files;
		cfg->nfiles += m.nfiles;
		m.nfiles = 0; /* now owned by cfg */
	}
	mf_free(&m);
	return 0;
fail:
	mf_free(&m);
	return -1;
}

/* ---- command line ---- */

enum {
	OPT_CACHE_DIR = 256,
	OPT_CACHE_SIZE,
	OPT_CACHE_MIN_FREE,
	OPT_VERSION,
	OPT_FILE = 512, /* + enum fopt */
};

static const struct option long_opts[] = {
    {"foreground", no_argument, NULL, 'f'},
    {"config", required_argument, NULL, 'c'},
    {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
    {"cache-size", required_argument, NULL, OPT_CACHE_SIZE},
    {"cache-min-free", required_argument, NULL, OPT_CACHE_MIN_FREE},
    {"verbose", no_argument, NULL, 'v'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"size", required_argument, NULL, OPT_FILE + FO_SIZE},
    {"start", required_argument, NULL, OPT_FILE + FO_START},
    {"read", required_argument, NULL, OPT_FILE + FO_READ},
    {"fill", required_argument, NULL, OPT_FILE + FO_FILL},
    {"header", required_argument, NULL, OPT_FILE + FO_HEADER},
    {"insecure", optional_argument, NULL, OPT_FILE + FO_INSECURE},
    {"retries", required_argument, NULL, OPT_FILE + FO_RETRIES},
    {"retry-time", required_argument, NULL, OPT_FILE + FO_RETRY_TIME},
    {"stall-timeout", required_argument, NULL, OPT_FILE + FO_STALL_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_FILE + FO_CONNECT_TIMEOUT},
    {"max-redirs", required_argument, NULL, OPT_FILE + FO_MAX_REDIRS},
    {"user", required_argument, NULL, OPT_FILE + FO_USER},
    {"location-trusted", optional_argument, NULL, OPT_FILE + FO_LOCATION_TRUSTED},
    {"netrc", optional_argument, NULL, OPT_FILE + FO_NETRC},
    {"netrc-file", required_argument, NULL, OPT_FILE + FO_NETRC_FILE},
    {"keep", required_argument, NULL, OPT_FILE + FO_KEEP},
    {NULL, 0, NULL, 0},
};

/* "-" first: positionals come back in order as option 1, nothing permuted
 * (and POSIXLY_CORRECT changes nothing); ":" next: a missing argument
 * returns ':' rather than '?', and getopt prints nothing. */
static const char short_opts[] = "-:fc:o:vqh";

/* Message for getopt's '?' or ':' on argv element @arg. */
static int bad_option(int c, const char *arg, char *err, size_t errlen)
{
	char q[ESC_LEN], name[ESC_LEN];
	size_t len, i, matches = 0;

	if (strncmp(arg, "--", 2)) {
		if (!isprint(optopt))
			return fail(err, errlen, "unknown option in '%s'", esc(q, sizeof(q), arg));
		if (c == ':')
			return fail(err, errlen, "option -%c needs a value", optopt);
		return fail(err, errlen, "unknown option -%c", optopt);
	}
	len = strcspn(arg, "=");
	snprintf(name, sizeof(name), "%.*s", (int)len, arg);
	esc(q, sizeof(q), name);
	if (c == ':')
		return fail(err, errlen, "option '%s' needs a value", q);
	if (optopt)
		return fail(err, errlen, "option '%s' takes no value", q);
	for (i = 0; long_opts[i].name && len > 2; i++)
		matches += !strncmp(long_opts[i].name, arg + 2, len - 2);
	if (matches > 1)
		return fail(err, errlen, "ambiguous option '%s'", q);
	return fail(err, errlen, "unknown option '%s'", q);
}

static int strvec_push(char ***vec, size_t *n, const char *s)
{
	char **v = realloc(*vec, (*n + 2) * sizeof(**vec));
	char *dup;

	if (!v)
		return -1;
	*vec = v;
	dup = strdup(s);
	if (!dup)
		return -1;
	v[(*n)++] = dup;
	v[*n] = NULL;
	return 0;
}

static int set_string(char **dst, const char *s)
{
	char *dup = strdup(s);

	if (!dup)
		return -1;
	free(*dst);
	*dst = dup;
	return 0;
}

/* --cache-size=BYTES: at least one block (smaller could hold nothing). */
static int parse_cache_size(struct config *cfg, const char *v, char *err, size_t errlen)
{
	char q[ESC_LEN];
	uint64_t bytes;
	int rc = parse_bytes(v, &bytes);

	if (rc == -ERANGE)
		return fail(err, errlen, "bad --cache-size value '%s': too large",
		            esc(q, sizeof(q), v));
	if (rc)
		return fail(err, errlen,
		            "bad --cache-size value '%s': expected a byte count (e.g. 256M, 10GiB)",
		            esc(q, sizeof(q), v));
	if (bytes < CONFIG_CACHE_BLOCK)
		return fail(err, errlen,
		            "bad --cache-size value '%s': at least 1M (one block of the store)",
		            esc(q, sizeof(q), v));
	cfg->cache_size = bytes;
	return 0;
}

/* --cache-min-free=BYTES|N%: N from 0 to 100, decimals allowed. */
static int parse_min_free(struct config *cfg, const char *v, char *err, size_t errlen)
{
	char q[ESC_LEN];
	size_t len = strlen(v);
	uint64_t bytes;
	int rc;

	if (len > 1 && v[len - 1] == '%') {
		char *end;
		double pct;

		if (!isdigit((unsigned char)v[0]))
			goto bad;
		errno = 0;
		pct = strtod(v, &end);
		if (errno || end != v + len - 1 || pct < 0)
			goto bad;
		if (pct > 100)
			return fail(err, errlen, "bad --cache-min-free value '%s': over 100%%",
			            esc(q, sizeof(q), v));
		cfg->cache_min_free_pct = pct;
		cfg->cache_min_free = 0;
		return 0;
	}
	rc = parse_bytes(v, &bytes);
	if (rc == -ERANGE)
		return fail(err, errlen, "bad --cache-min-free value '%s': too large",
		            esc(q, sizeof(q), v));
	if (rc)
		goto bad;
	cfg->cache_min_free = bytes;
	cfg->cache_min_free_pct = -1;
	return 0;
bad:
	return fail(err, errlen,
	            "bad --cache-min-free value '%s': expected a byte count (e.g. 2G) or a "
	            "percentage (e.g. 5%%)",
	            esc(q, sizeof(q), v));
}

/* Parse the options; positionals are collected in @pos in order. */
static int parse_options(struct config *cfg, struct file_opts *cli, int argc, char **argv,
                         char **pos, size_t *npos, char *err, size_t errlen)
{
	char q[ESC_LEN];
	int c, cur;

	optind = 0; /* glibc: start afresh, also forgets a half-read "-fv" */
	opterr = 0;
	for (;;) {
		cur = optind ? optind : 1;
		c = getopt_long(argc, argv, short_opts, long_opts, NULL);
		if (c == -1)
			break;
		switch (c) {
		case 1:
			pos[(*npos)++] = optarg;
			break;
		case 'f':
			cfg->foreground = true;
			break;
		case 'c':
			if (cfg->manifest)
				return fail(err, errlen, "option -c/--config given twice");
			if (!*optarg)
				return fail(err, errlen, "option -c/--config needs a file name");
			if (set_string(&cfg->manifest, optarg))
				return fail(err, errlen, "out of memory");
			break;
		case 'o':
			if (!*optarg)
				return fail(err, errlen, "option -o needs a value");
			if (strvec_push(&cfg->fuse_opts, &cfg->nfuse_opts, optarg))
				return fail(err, errlen, "out of memory");
			break;
		case 'v':
			cfg->verbosity = (cfg->verbosity < 0 ? 0 : cfg->verbosity) + 1;
			break;
		case 'q':
			cfg->verbosity = -1;
			break;
		case 'h':
			cfg->show_help = true;
			return 0;
		case OPT_VERSION:
			cfg->show_version = true;
			return 0;
		case OPT_CACHE_DIR:
			if (!*optarg)
				return fail(err, errlen, "option --cache-dir needs a directory");
			free(cfg->cache_dir);
			cfg->cache_dir = NULL;
			cfg->memory_store = !strcmp(optarg, "memory");
			if (!cfg->memory_store && set_string(&cfg->cache_dir, optarg))
				return fail(err, errlen, "out of memory");
			break;
		case OPT_CACHE_SIZE:
			if (parse_cache_size(cfg, optarg, err, errlen))
				return -1;
			break;
		case OPT_CACHE_MIN_FREE:
			if (parse_min_free(cfg, optarg, err, errlen))
				return -1;
			break;
		case '?':
		case ':':
			return bad_option(c, argv[cur], err, errlen);
		default:
			if (c >= OPT_FILE && c < OPT_FILE + FO_COUNT) {
				if (fopt_set_arg(cli, c - OPT_FILE, optarg, "--", err, errlen))
					return -1;
				/* optarg points into the caller's argv, whichever
				 * spelling (--user=X, --user X, --us=X) was used. */
				scrub_arg(c - OPT_FILE, optarg);
				break;
			}
			return fail(err, errlen, "unexpected option in '%s'",
			            esc(q, sizeof(q), argv[cur]));
		}
	}
	while (optind < argc)
		pos[(*npos)++] = argv[optind++];
	return 0;
}

/* "x=cmd:ls" where the mountpoint should be: a forgotten MOUNTPOINT. */
static bool looks_like_file(const char *arg)
{
	const char *eq = strchr(arg, '=');
	const char *src;
	char *name;
	size_t n;
	bool named;

	if (!eq || eq == arg)
		return false;
	src = eq + 1;
	n = url_scheme_len(src);
	if (strcmp(src, "-") && strncmp(src, "cmd:", 4) && strncmp(src, "pipe:", 5) &&
	    !(n && !strncmp(src + n, "://", 3)))
		return false;
	name = strndup(arg, (size_t)(eq - arg));
	named = name && !config_validate_name(name, NULL, 0);
	free(name);
	return named;
}

static int append_file(struct config *cfg, struct file_spec *f)
{
	struct file_spec *files = realloc(cfg->files, (cfg->nfiles + 1) * sizeof(*files));

	if (!files)
		return -1;
	files[cfg->nfiles++] = *f;
	cfg->files = files;
	memset(f, 0, sizeof(*f));
	return 0;
}

/* Whole-config checks: names that clash, stdin read twice. */
static int check_files(const struct config *cfg, size_t nmanifest, char *err, size_t errlen)
{
	char q1[ESC_LEN], q2[ESC_LEN];
	const char **names, *n1, *n2;
	const struct file_spec *in = NULL;
	size_t i, a, b;
	bool dup;
	int rc;

	for (i = 0; i < cfg->nfiles; i++) {
		if (cfg->files[i].kind != SOURCE_STDIN)
			continue;
		if (in)
			return fail(err, errlen,
			            "'%s' and '%s' both read standard input; only one file can",
			            esc(q1, sizeof(q1), in->name),
			            esc(q2, sizeof(q2), cfg->files[i].name));
		in = &cfg->files[i];
	}
	names = calloc(cfg->nfiles ? cfg->nfiles : 1, sizeof(*names));
	if (!names)
		return fail(err, errlen, "out of memory");
	for (i = 0; i < cfg->nfiles; i++)
		names[i] = cfg->files[i].name;
	rc = find_clash(names, cfg->nfiles, &a, &b, &dup);
	free(names);
	if (rc < 0)
		return fail(err, errlen, "out of memory");
	if (!rc)
		return 0;
	n1 = cfg->files[a].name;
	n2 = cfg->files[b].name;
	esc(q1, sizeof(q1), n1);
	esc(q2, sizeof(q2), n2);
	if (dup && a < nmanifest && b >= nmanifest)
		return fail(err, errlen,
		            "duplicate name '%s': in the manifest and on the command line", q2);
	if (dup)
		return fail(err, errlen, "duplicate name '%s'", q2);
	return fail(err, errlen, "'%s' can't be both a file and the directory of '%s'",
	            strlen(n1) < strlen(n2) ? q1 : q2, strlen(n1) < strlen(n2) ? q2 : q1);
}

int config_parse_args(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
	char prog[] = "streamfs";
	char *noargs[] = {prog, NULL};
	struct file_opts cli;
	struct file_spec f;
	char q[ESC_LEN];
	char **av = NULL;
	char **pos = NULL;
	size_t npos = 0, nmanifest, i;
	int result = -1;

	memset(cfg, 0, sizeof(*cfg));
	cfg->cache_min_free_pct = 5;
	config_file_opts_default(&cli);
	if (argc < 1 || !argv) {
		argc = 1;
		argv = noargs;
	}
	/* getopt works on a copy: the caller's argv keeps its order. */
	av = calloc((size_t)argc + 1, sizeof(*av));
	pos = calloc((size_t)argc, sizeof(*pos));
	cfg->fuse_opts = calloc(1, sizeof(*cfg->fuse_opts));
	if (!av || !pos || !cfg->fuse_opts) {
		fail(err, errlen, "out of memory");
		goto out;
	}
	memcpy(av, argv, (size_t)argc * sizeof(*av));
	if (parse_options(cfg, &cli, argc, av, pos, &npos, err, errlen))
		goto out;
	if (cfg->show_help || cfg->show_version) {
		result = 0;
		goto out;
	}
	if (!npos) {
		fail(err, errlen, "missing MOUNTPOINT");
		goto out;
	}
	if (!strcmp(pos[0], "-")) {
		fail(err, errlen, "'-' is not a valid MOUNTPOINT (%s)", stdin_hint);
		goto out;
	}
	if (!*pos[0]) {
		fail(err, errlen, "empty MOUNTPOINT");
		goto out;
	}
	if (looks_like_file(pos[0])) {
		fail(err, errlen,
		     "missing MOUNTPOINT: '%s' is a NAME=SOURCE, the mountpoint comes first",
		     esc(q, sizeof(q), pos[0]));
		goto out;
	}
	if (set_string(&cfg->mountpoint, pos[0])) {
		fail(err, errlen, "out of memory");
		goto out;
	}
	if (cfg->manifest && config_load_manifest(cfg, cfg->manifest, err, errlen))
		goto out;
	nmanifest = cfg->nfiles;
	for (i = 1; i < npos; i++) {
		if (!strcmp(pos[i], "-")) {
			fail(err, errlen, "'-' alone is not a file (%s)", stdin_hint);
			goto out;
		}
		if (config_parse_file(pos[i], &cli, &f, err, errlen))
			goto out;
		scrub_arg(-1, pos[i]);
		if (append_file(cfg, &f)) {
			config_file_spec_free(&f);
			fail(err, errlen, "out of memory");
			goto out;
		}
	}
	if (check_files(cfg, nmanifest, err, errlen))
		goto out;
	result = 0;
out:
	config_file_opts_free(&cli);
	free(av);
	free(pos);
	return result;
}

void config_free(struct config *cfg)
{
	size_t i;

	if (!cfg)
		return;
	free(cfg->mountpoint);
	free(cfg->manifest);
	free(cfg->cache_dir);
	for (i = 0; i < cfg->nfuse_opts; i++)
		free(cfg->fuse_opts[i]);
	free(cfg->fuse_opts);
	for (i = 0; i < cfg->nfiles; i++)
		config_file_spec_free(&cfg->files[i]);
	free(cfg->files);
	memset(cfg, 0, sizeof(*cfg));
}

/* ---- streamfs add ---- */

void config_strv_free(char **v)
{
	size_t i;

	if (!v)
		return;
	for (i = 0; v[i]; i++) {
		/* The fields may hold passwords. */
		explicit_bzero(v[i], strlen(v[i]));
		free(v[i]);
	}
	free(v);
}

static int push_kv(char ***v, size_t *n, const char *key, const char *value)
{
	char *kv;
	int rc;

	if (asprintf(&kv, "%s=%s", key, value) < 0)
		return -1;
	rc = strvec_push(v, n, kv);
	explicit_bzero(kv, strlen(kv));
	free(kv);
	return rc;
}

/*
 * One OPTION=VALUE of "streamfs add" into fields: @FILE values read here
 * (checked as on the command line), a relative netrc-file made absolute,
 * the rest passed on for the daemon to check.
 */
static int add_option(char ***v, size_t *n, char *arg, char *err, size_t errlen)
{
	char *key = arg + (strncmp(arg, "--", 2) ? 0 : 2);
	size_t klen = strcspn(key, "=");
	const char *value = key[klen] ? key + klen + 1 : NULL;
	struct file_opts o;
	char name[32];
	int id = -1, rc = 0;
	size_t i;

	if (klen < sizeof(name)) {
		memcpy(name, key, klen);
		name[klen] = '\0';
		id = fopt_find(name);
	}
	if ((id == FO_USER || id == FO_HEADER) && value && value[0] == '@') {
		config_file_opts_default(&o);
		if (fopt_set_file(&o, id, value + 1, "", err, errlen))
			return -1;
		if (id == FO_USER)
			rc = push_kv(v, n, "user", o.userpwd);
		for (i = 0; !rc && i < o.nheaders; i++)
			rc = push_kv(v, n, "header", o.headers[i]);
		if (o.userpwd)
			explicit_bzero(o.userpwd, strlen(o.userpwd));
		for (i = 0; i < o.nheaders; i++)
			explicit_bzero(o.headers[i], strlen(o.headers[i]));
		config_file_opts_free(&o);
	} else if (id == FO_NETRC_FILE && value && *value && value[0] != '/') {
		config_file_opts_default(&o);
		if (set_netrc_file(&o, value, "", err, errlen))
			return -1;
		rc = push_kv(v, n, "netrc-file", o.netrc_file);
		config_file_opts_free(&o);
	} else {
		if (id >= 0) {
			/* A bad value is bad usage: refused here (exit 2),
			 * before the daemon is asked. */
			config_file_opts_default(&o);
			rc = fopt_set(&o, id, value, "", err, errlen);
			config_file_opts_free(&o);
			if (rc)
				return -1;
		}
		rc = strvec_push(v, n, key);
		if (id >= 0)
			scrub_arg(id, key + klen + (value ? 1 : 0));
	}
	return rc ? fail(err, errlen, "out of memory") : 0;
}

int config_add_request(int argc, char **argv, char ***fields, size_t *nfields, char *err,
                       size_t errlen)
{
	char **v = NULL;
	size_t n = 0;
	int i;

	*fields = NULL;
	*nfields = 0;
	if (argc < 1 || !argv[0])
		return fail(err, errlen, "missing NAME=SOURCE");
	if (strvec_push(&v, &n, "add") || strvec_push(&v, &n, argv[0])) {
		config_strv_free(v);
		return fail(err, errlen, "out of memory");
	}
	scrub_arg(-1, argv[0]);
	for (i = 1; i < argc; i++) {
		if (add_option(&v, &n, argv[i], err, errlen)) {
			config_strv_free(v);
			return -1;
		}
	}
	*fields = v;
	*nfields = n;
	return 0;
}
