/*
 * manifest.c - the manifest (-c FILE): one INI section per file, read with
 * libinih.
 *
 * Contract in config.h (config_load_manifest). What this file keeps true:
 * - Every message names the file and the line: "streamfs.ini:7: ...".
 * - inih reads through mf_read(), which hands it one line at a time from
 *   our own buffer: so we know the line number (Debian's inih is built
 *   without INI_HANDLER_LINENO), we see every section header in full (inih
 *   cuts section names at 49 bytes and does not report sections without
 *   keys), and we refuse what inih would silently mangle (NUL bytes, lines
 *   longer than its buffer).
 * - Debian's inih exports tuning knobs as globals; parse_ini() sets the
 *   ones we depend on for the duration of one parse and restores them.
 * - Nothing reaches @cfg unless the whole manifest is good.
 */
#include "config_impl.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <ini.h>

#define MANIFEST_LINE_MAX 65536 /* long enough for signed URLs and headers */
#define SEEN_SOURCE (1u << 31)  /* in section.seen, next to 1 << fopt_id */

/* One [NAME] section: a file. */
struct section {
	struct file_spec f;
	int line;      /* of its header */
	unsigned seen; /* keys given: 1 << fopt_id, and SEEN_SOURCE */
};

DEFINE_VECTOR(sections, struct section);
DEFINE_VECTOR(line_buf, char);

/* Parsing state. */
struct manifest {
	FILE *f;
	const char *path;
	int lineno;           /* line being handed to inih */
	struct line_buf line; /* its bytes, NUL-terminated */
	size_t pos;           /* bytes already handed over */

	struct sections sections; /* in order */

	bool secrets; /* a user, header or URL password written in the file itself */
	bool failed;  /* err holds the message */
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 3, 4))) static int mf_fail(struct manifest *m, int line,
                                                         const char *fmt, ...)
{
	char msg[512], qp[ESC_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!m->failed)
		cfg_fail(m->err, m->errlen, "%s:%d: %s", cfg_esc(qp, sizeof(qp), m->path), line,
		         msg);
	m->failed = true;
	return -1;
}

static struct section *mf_last(struct manifest *m)
{
	return m->sections.len ? &m->sections.ptr[m->sections.len - 1] : NULL;
}

/* The section before a new header (or EOF) must have had a source. */
static int mf_end_section(struct manifest *m)
{
	char q[ESC_LEN];
	struct section *s = mf_last(m);

	if (!s || s->f.source)
		return 0;
	return mf_fail(m, s->line, "no 'source' key in [%s]", cfg_esc(q, sizeof(q), s->f.name));
}

/*
 * If the current line is a section header, as inih will read it (first
 * non-blank byte '[', up to the first ']'), start a new file. A line with
 * '[' and no ']' is left for inih to report as a syntax error.
 */
static int mf_section(struct manifest *m)
{
	char q[ESC_LEN], msg[384];
	const char *s = m->line.ptr, *end, *p;
	struct section sec = {.line = m->lineno};

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
		               cfg_esc(q, sizeof(q), msg));
	}
	if (mf_end_section(m))
		return -1;
	config_file_opts_default(&sec.f.opts);
	sec.f.name = strndup(s + 1, (size_t)(end - s - 1));
	if (!sec.f.name || sections_push(&m->sections, sec)) {
		free(sec.f.name);
		return mf_fail(m, m->lineno, "out of memory");
	}
	if (!strcmp(sec.f.name, "streamfs"))
		return mf_fail(m, m->lineno, "section [streamfs] is reserved");
	if (config_validate_name(sec.f.name, msg, sizeof(msg)))
		return mf_fail(m, m->lineno, "%s", msg);
	return 0;
}

/* Read the next raw line into m->line. Returns 1, 0 at EOF, -1 on error. */
static int mf_next_line(struct manifest *m)
{
	char q[ESC_LEN];
	int c;

	m->line.len = 0;
	m->pos = 0;
	while ((c = getc_unlocked(m->f)) != EOF) {
		if (m->line.len == MANIFEST_LINE_MAX)
			return mf_fail(m, m->lineno + 1, "line longer than %d bytes",
			               MANIFEST_LINE_MAX);
		if (c == '\0')
			return mf_fail(m, m->lineno + 1, "NUL byte in line");
		/* Room for the byte and the NUL after it. */
		if (line_buf_reserve(&m->line, 2) < 0)
			return mf_fail(m, m->lineno + 1, "out of memory");
		m->line.ptr[m->line.len++] = (char)c;
		if (c == '\n')
			break;
	}
	if (ferror(m->f)) {
		/* EISDIR and friends: fopen() succeeds on a directory. */
		cfg_fail(m->err, m->errlen, "cannot read manifest '%s': %s",
		         cfg_esc(q, sizeof(q), m->path), strerror(errno));
		m->failed = true;
		return -1;
	}
	if (!m->line.len)
		return 0;
	m->line.ptr[m->line.len] = '\0';
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
	if (m->pos == m->line.len && mf_next_line(m) <= 0)
		return NULL;
	n = m->line.len - m->pos;
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, m->line.ptr + m->pos, n);
	str[n] = '\0';
	m->pos += n;
	return str;
}

/* One "key = value" of section @s: the source or an option. */
static int mf_key(struct manifest *m, struct section *s, const char *key, const char *value)
{
	char qk[ESC_LEN], qn[ESC_LEN], msg[384];
	const struct fopt *d = NULL;
	size_t off, len;
	unsigned bit;
	int id = -1;

	cfg_esc(qn, sizeof(qn), s->f.name);
	if (!strcasecmp(key, "source")) {
		bit = SEEN_SOURCE;
	} else {
		id = fopt_find(key);
		if (id < 0)
			return mf_fail(m, m->lineno, "unknown key '%s' in [%s]",
			               cfg_esc(qk, sizeof(qk), key), qn);
		d = &fopts[id];
		bit = d->repeat ? 0 : 1u << id;
	}
	if (s->seen & bit)
		return mf_fail(m, m->lineno, "key '%s' given twice in [%s]",
		               cfg_esc(qk, sizeof(qk), key), qn);
	if (!d ? parse_source(&s->f, value, msg, sizeof(msg))
	       : fopt_set_arg(&s->f.opts, id, value, "", msg, sizeof(msg)))
		return mf_fail(m, m->lineno, "[%s]: %s", qn, msg);
	s->seen |= bit;
	if (!d)
		m->secrets |= s->f.kind == SOURCE_URL && url_password(value, &off, &len);
	else
		m->secrets |= (d->secret && value[0] != '@') ||
		              (id == FO_PROXY && url_password(value, &off, &len));
	return 0;
}

/* inih's handler: nonzero to go on. */
static int mf_handler(void *user, const char *section, const char *key, const char *value)
{
	struct manifest *m = user;
	char qk[ESC_LEN];
	struct section *s = mf_last(m);

	if (m->failed)
		return 0;
	if (!s)
		return !mf_fail(m, m->lineno, "key '%s' outside of any [section]",
		                cfg_esc(qk, sizeof(qk), key));
	/* inih's copy of the name is cut short; ours must start the same. */
	if (strncmp(s->f.name, section, strlen(section)))
		return !mf_fail(m, m->lineno, "cannot parse the section header");
	return !mf_key(m, s, key, value);
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
	for (size_t i = 0; i < m->sections.len; i++)
		config_file_spec_free(&m->sections.ptr[i].f);
	sections_free(&m->sections);
	line_buf_free(&m->line);
	if (m->f)
		fclose(m->f);
}

/* The files of @cfg, then those of the manifest. */
struct all_names {
	const struct config *cfg;
	const struct manifest *m;
};

static const char *all_names_at(const void *ctx, size_t i)
{
	const struct all_names *a = ctx;

	if (i < a->cfg->files.len)
		return a->cfg->files.ptr[i].name;
	return a->m->sections.ptr[i - a->cfg->files.len].f.name;
}

/* Names already in @cfg and the manifest's must not clash. */
static int mf_check_names(struct manifest *m, const struct config *cfg)
{
	struct all_names all = {.cfg = cfg, .m = m};
	size_t before = cfg->files.len;
	const struct section *second;
	char q[ESC_LEN], msg[384];
	struct clash c;
	int rc;

	rc = find_clash(before + m->sections.len, all_names_at, &all, &c);
	if (rc < 0)
		return mf_fail(m, 0, "out of memory");
	if (!rc)
		return 0;
	/* second > first, so second is from this manifest. */
	second = &m->sections.ptr[c.second - before];
	cfg_esc(q, sizeof(q), second->f.name);
	if (c.dup && c.first >= before)
		return mf_fail(m, second->line, "duplicate section [%s] (first at line %d)", q,
		               m->sections.ptr[c.first - before].line);
	if (c.dup)
		return mf_fail(m, second->line, "duplicate name [%s]", q);
	fail_file_and_dir(msg, sizeof(msg), all_names_at(&all, c.first), second->f.name, "[]");
	return mf_fail(m, second->line, "%s", msg);
}

/* Credentials written in the manifest: the file must be its owner's alone. */
static int mf_check_private(struct manifest *m)
{
	char msg[ESC_LEN + 160];
	struct stat st;

	if (!m->secrets)
		return 0;
	if (fstat(fileno(m->f), &st) < 0) {
		cfg_fail(m->err, m->errlen, "cannot read manifest: %s", strerror(errno));
		m->failed = true;
		return -1;
	}
	if (!check_private(&st, "manifest", m->path, msg, sizeof(msg)))
		return 0;
	/* "...: chmod go= it, or give them as user = @FILE, header = @FILE" */
	cfg_fail(m->err, m->errlen, "%s, or give them as user = @FILE, header = @FILE", msg);
	m->failed = true;
	return -1;
}

/* Hand the manifest's files over to @cfg, after those already there. */
static int mf_move_files(struct manifest *m, struct config *cfg)
{
	if (config_files_reserve(&cfg->files, m->sections.len) < 0)
		return cfg_fail(m->err, m->errlen, "out of memory");
	for (size_t i = 0; i < m->sections.len; i++)
		cfg->files.ptr[cfg->files.len++] = m->sections.ptr[i].f;
	m->sections.len = 0; /* now owned by cfg */
	return 0;
}

int config_load_manifest(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct manifest m = {.path = path, .err = err, .errlen = errlen};
	char q[ESC_LEN];
	int rc;

	if (!path || !*path)
		return cfg_fail(err, errlen, "empty manifest file name");
	m.f = fopen(path, "re");
	if (!m.f)
		return cfg_fail(err, errlen, "cannot read manifest '%s': %s",
		                cfg_esc(q, sizeof(q), path), strerror(errno));
	rc = parse_ini(&m);
	if (!m.failed && rc == -2)
		mf_fail(&m, m.lineno, "out of memory");
	else if (!m.failed && rc)
		mf_fail(&m, rc, "syntax error: expected [NAME] or KEY = VALUE");
	if (m.failed || mf_end_section(&m) || mf_check_names(&m, cfg) || mf_check_private(&m) ||
	    mf_move_files(&m, cfg)) {
		mf_free(&m);
		return -1;
	}
	mf_free(&m);
	return 0;
}
