/*
 * secrets.c - credentials: user=@FILE and header=@FILE, netrc files, the
 * private-mode checks, and overwriting secrets in argv.
 *
 * Contract in config.h and config_impl.h. What this file keeps true:
 * - A file that holds credentials (an @FILE, a netrc file, a manifest with
 *   passwords in it) is refused when it is a regular file that group or
 *   others can access, as ssh refuses such keys. Pipes have no such mode.
 * - Devices are never opened: opening one can have effects. Checks use
 *   stat() first; an @FILE is opened without blocking on a FIFO that has
 *   no writer yet.
 * - No message quotes the text of an @FILE, and its buffer is wiped with
 *   explicit_bzero() before it is freed.
 */
#include "config_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET_FILE_MAX 65536 /* a --user=@FILE or --header=@FILE */

int check_private(const struct stat *st, const char *what, const char *path, char *err,
                  size_t errlen)
{
	char q[ESC_LEN];

	if (!S_ISREG(st->st_mode) || !(st->st_mode & 077))
		return 0;
	return cfg_fail(err, errlen,
	                "%s '%s' holds credentials but is accessible by group or others "
	                "(mode %04o): chmod go= it",
	                what, cfg_esc(q, sizeof(q), path), (unsigned)(st->st_mode & 07777));
}

/*
 * --netrc-file: kept as an absolute path (the daemon works from "/"), and
 * checked now, with stat() only: opening a device can have effects.
 */
enum fopt_result parse_netrc_file(struct file_opts *o, const struct fopt *d, const char *value,
                                  char *err, size_t errlen)
{
	char q[ESC_LEN];
	struct stat st;
	char *abs;

	cfg_esc(q, sizeof(q), value);
	abs = realpath(value, NULL);
	if (!abs || stat(abs, &st) < 0 || access(abs, R_OK) < 0) {
		cfg_fail(err, errlen, "cannot read netrc file '%s': %s", q, strerror(errno));
		free(abs);
		return FOPT_SAID;
	}
	if (!S_ISREG(st.st_mode)) {
		cfg_fail(err, errlen, "netrc file '%s' is not a regular file", q);
		free(abs);
		return FOPT_SAID;
	}
	if (check_private(&st, "netrc file", value, err, errlen)) {
		free(abs);
		return FOPT_SAID;
	}
	free(o->netrc_file);
	o->netrc_file = abs;
	return FOPT_OK;
}

/* Read at most SECRET_FILE_MAX bytes of @fd into a new NUL-terminated buffer. */
static char *slurp(int fd, const char *path, char *err, size_t errlen)
{
	char q[ESC_LEN];
	char *buf = malloc(SECRET_FILE_MAX + 1);
	size_t len = 0;
	ssize_t n;

	if (!buf) {
		cfg_fail(err, errlen, "out of memory");
		return NULL;
	}
	while (len <= SECRET_FILE_MAX &&
	       (n = read(fd, buf + len, SECRET_FILE_MAX + 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			cfg_fail(err, errlen, "cannot read '%s': %s", cfg_esc(q, sizeof(q), path),
			         strerror(errno));
			goto bad;
		}
		len += (size_t)n;
	}
	if (len > SECRET_FILE_MAX) {
		cfg_fail(err, errlen, "'%s' is longer than %d bytes", cfg_esc(q, sizeof(q), path),
		         SECRET_FILE_MAX);
		goto bad;
	}
	if (memchr(buf, '\0', len)) {
		cfg_fail(err, errlen, "NUL byte in '%s'", cfg_esc(q, sizeof(q), path));
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

	cfg_esc(q, sizeof(q), path);
	if (stat(path, &st) < 0) {
		cfg_fail(err, errlen, "cannot read '%s': %s", q, strerror(errno));
		return NULL;
	}
	if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
		cfg_fail(err, errlen, "'%s' is not a regular file or a pipe", q);
		return NULL;
	}
	/* Not blocking on a FIFO without a writer; a pipe's reads still wait. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, 0) < 0) {
		cfg_fail(err, errlen, "cannot read '%s': %s", q, strerror(errno));
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
	struct config_strings *to = &o->headers, *from = &t->headers;

	if (id == FO_USER) {
		free(o->userpwd);
		o->userpwd = t->userpwd;
		t->userpwd = NULL;
		return 0;
	}
	if (config_strings_reserve(to, from->len + 1) < 0)
		return -1;
	memcpy(to->ptr + to->len, from->ptr, from->len * sizeof(*from->ptr));
	to->len += from->len;
	to->ptr[to->len] = NULL;
	from->len = 0;
	return 0;
}

/*
 * Each line of @buf (from @q, quoted) as a value of option @id into @t;
 * blank lines are skipped, CR LF is fine. Messages never quote the line.
 */
static int fopt_set_lines(struct file_opts *t, int id, char *buf, const char *q, const char *dash,
                          char *err, size_t errlen)
{
	const char *name = fopts[id].name;
	char *line, *next, msg[160];
	size_t lineno = 0, len;

	for (line = buf; *line; line = next) {
		next = line + strcspn(line, "\n");
		if (*next)
			*next++ = '\0';
		lineno++;
		len = strlen(line);
		if (len && line[len - 1] == '\r')
			line[len - 1] = '\0';
		if (!line[strspn(line, " \t")])
			continue;
		if (id == FO_USER && t->userpwd)
			return cfg_fail(err, errlen, "'%s': more than one line for %s%s", q, dash,
			                name);
		if (fopt_set(t, id, line, dash, msg, sizeof(msg)))
			return cfg_fail(err, errlen, "'%s' line %zu (not shown): expected %s", q,
			                lineno, fopts[id].expect);
	}
	if (!t->userpwd && !t->headers.len)
		return cfg_fail(err, errlen, "'%s' is empty: expected %s", q,
		                id == FO_USER ? "USER:PASSWORD" : "'Name: value' lines");
	return 0;
}

/*
 * --user=@FILE (one line, USER:PASSWORD) or --header=@FILE (one header per
 * line). On failure @o is unchanged.
 */
static int fopt_set_file(struct file_opts *o, int id, const char *path, const char *dash, char *err,
                         size_t errlen)
{
	char q[ESC_LEN];
	struct file_opts t;
	size_t total;
	char *buf;
	int rc;

	if (!*path)
		return cfg_fail(err, errlen, "option %s%s=@ needs a file name", dash,
		                fopts[id].name);
	buf = read_secret_file(path, err, errlen);
	if (!buf)
		return -1;
	cfg_esc(q, sizeof(q), path);
	total = strlen(buf);
	config_file_opts_default(&t);
	rc = fopt_set_lines(&t, id, buf, q, dash, err, errlen);
	if (!rc && fopt_take(o, &t, id))
		rc = cfg_fail(err, errlen, "out of memory");
	config_file_opts_free(&t);
	explicit_bzero(buf, total);
	free(buf);
	return rc;
}

int fopt_set_arg(struct file_opts *o, int id, const char *value, const char *dash, char *err,
                 size_t errlen)
{
	if (fopts[id].secret && value && value[0] == '@')
		return fopt_set_file(o, id, value + 1, dash, err, errlen);
	return fopt_set(o, id, value, dash, err, errlen);
}

bool url_password(const char *url, size_t *off, size_t *len)
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
 * What follows the ':' of --user, the value of a --header, the password of
 * a URL or of a --proxy URL. '*' rather than NUL, so that ps shows that something was hidden
 * there. An @FILE value is a path: kept.
 */
void scrub_arg(int id, char *value)
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
	} else if (id == FO_PROXY && url_password(value, &off, &len)) {
		memset(value + off, '*', len);
	} else if (id < 0 && (p = strchr(value, '=')) && url_password(p + 1, &off, &len)) {
		memset(p + 1 + off, '*', len);
	}
}
