/*
 * config.c - the command lines of mount and of "streamfs add", parsed into
 * struct config; and the messages every piece of the parser writes.
 *
 * Contract in config.h. The pieces: options.c (per-file option values),
 * secrets.c (@FILE, netrc files, argv scrubbing), names.c (NAME=SOURCE and
 * clashes), manifest.c (-c FILE); config_impl.h is what they share. What
 * this file keeps true:
 * - Nothing is printed and nothing exits: every problem becomes one line in
 *   the caller's @err buffer. User text quoted into a message goes through
 *   cfg_esc(), so a name holding a newline cannot split the line, and a
 *   huge argument cannot push the useful part out of the buffer.
 * - Every function either succeeds or leaves its output empty (or, where
 *   the header says so, unchanged); nothing leaks on any path.
 * - getopt_long() keeps global state (optind), so config_parse_args() is
 *   not thread-safe; it runs once, at start-up.
 */
#include "config_impl.h"

#include <ctype.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char stdin_hint[] = "to read standard input, write NAME=-";

/* ---- messages ---- */

int cfg_fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

const char *cfg_esc(char *buf, size_t size, const char *s)
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

/* ---- command line ---- */

enum {
	OPT_CACHE_DIR = 256,
	OPT_SIZE_UNKNOWN,
	OPT_CACHE_SIZE,
	OPT_CACHE_MIN_FREE,
	OPT_VERSION,
	OPT_PERSIST,
	OPT_FILE = 512, /* + enum fopt_id */
};

static const struct option long_opts[] = {
    {"foreground", no_argument, NULL, 'f'},
    {"config", required_argument, NULL, 'c'},
    {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
    {"size-unknown", required_argument, NULL, OPT_SIZE_UNKNOWN},
    {"cache-size", required_argument, NULL, OPT_CACHE_SIZE},
    {"cache-min-free", required_argument, NULL, OPT_CACHE_MIN_FREE},
    {"persist", no_argument, NULL, OPT_PERSIST},
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
    {"proxy", required_argument, NULL, OPT_FILE + FO_PROXY},
    {"noproxy", required_argument, NULL, OPT_FILE + FO_NOPROXY},
    {"region", required_argument, NULL, OPT_FILE + FO_REGION},
    {"endpoint-url", required_argument, NULL, OPT_FILE + FO_ENDPOINT_URL},
    {"profile", required_argument, NULL, OPT_FILE + FO_PROFILE},
    {"force-path-style", optional_argument, NULL, OPT_FILE + FO_FORCE_PATH_STYLE},
    {"no-sign-request", optional_argument, NULL, OPT_FILE + FO_NO_SIGN_REQUEST},
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
			return cfg_fail(err, errlen, "unknown option in '%s'",
			                cfg_esc(q, sizeof(q), arg));
		if (c == ':')
			return cfg_fail(err, errlen, "option -%c needs a value", optopt);
		return cfg_fail(err, errlen, "unknown option -%c", optopt);
	}
	len = strcspn(arg, "=");
	snprintf(name, sizeof(name), "%.*s", (int)len, arg);
	cfg_esc(q, sizeof(q), name);
	if (c == ':')
		return cfg_fail(err, errlen, "option '%s' needs a value", q);
	if (optopt)
		return cfg_fail(err, errlen, "option '%s' takes no value", q);
	for (i = 0; long_opts[i].name && len > 2; i++)
		matches += !strncmp(long_opts[i].name, arg + 2, len - 2);
	if (matches > 1)
		return cfg_fail(err, errlen, "ambiguous option '%s'", q);
	return cfg_fail(err, errlen, "unknown option '%s'", q);
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

/* --cache-size=BYTES: at least two blocks. One read (up to 1 MiB) can
 * span two, and a reader is answered only once all its bytes are in the
 * store at the same time: under a one-block budget such a read could
 * never be answered. */
static int parse_cache_size(struct config *cfg, const char *v, char *err, size_t errlen)
{
	char q[ESC_LEN];
	uint64_t bytes;
	int rc = config_parse_bytes(v, &bytes);

	if (rc == -ERANGE)
		return cfg_fail(err, errlen, "bad --cache-size value '%s': too large",
		                cfg_esc(q, sizeof(q), v));
	if (rc)
		return cfg_fail(
		    err, errlen,
		    "bad --cache-size value '%s': expected a byte count (e.g. 256M, 10GiB)",
		    cfg_esc(q, sizeof(q), v));
	if (bytes < 2 * (uint64_t)CONFIG_CACHE_BLOCK)
		return cfg_fail(err, errlen,
		                "bad --cache-size value '%s': at least 2M (one read can span two "
		                "blocks of the store)",
		                cfg_esc(q, sizeof(q), v));
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
			return cfg_fail(err, errlen, "bad --cache-min-free value '%s': over 100%%",
			                cfg_esc(q, sizeof(q), v));
		cfg->cache_min_free_pct = pct;
		cfg->cache_min_free = 0;
		return 0;
	}
	rc = config_parse_bytes(v, &bytes);
	if (rc == -ERANGE)
		return cfg_fail(err, errlen, "bad --cache-min-free value '%s': too large",
		                cfg_esc(q, sizeof(q), v));
	if (rc)
		goto bad;
	cfg->cache_min_free = bytes;
	cfg->cache_min_free_pct = -1;
	return 0;
bad:
	return cfg_fail(err, errlen,
	                "bad --cache-min-free value '%s': expected a byte count (e.g. 2G) or a "
	                "percentage (e.g. 5%%)",
	                cfg_esc(q, sizeof(q), v));
}

/* --cache-dir DIR, or --cache-dir=memory. */
static int set_cache_dir(struct config *cfg, const char *arg, char *err, size_t errlen)
{
	if (!*arg)
		return cfg_fail(err, errlen, "option --cache-dir needs a directory");
	free(cfg->cache_dir);
	cfg->cache_dir = NULL;
	cfg->memory_store = !strcmp(arg, "memory");
	if (!cfg->memory_store && set_string(&cfg->cache_dir, arg))
		return cfg_fail(err, errlen, "out of memory");
	return 0;
}

/* --size-unknown=auto|wait: for the whole mount. */
static int set_size_unknown(struct config *cfg, const char *arg, char *err, size_t errlen)
{
	char q[ESC_LEN];

	if (strcasecmp(arg, "auto") && strcasecmp(arg, "wait"))
		return cfg_fail(err, errlen, "bad --size-unknown value '%s': expected auto or wait",
		                cfg_esc(q, sizeof(q), arg));
	cfg->size_unknown_wait = !strcasecmp(arg, "wait");
	return 0;
}

/*
 * Option @c (from getopt, with its @arg) into @cfg, or into @cli, the
 * per-file options of the files on the command line. @arg points into the
 * caller's argv, whichever spelling (--user=X, --user X, --us=X) was used:
 * secrets in it are overwritten once copied.
 */
static int set_option(struct config *cfg, struct file_opts *cli, int c, char *arg, char *err,
                      size_t errlen)
{
	switch (c) {
	case 'f':
		cfg->foreground = true;
		return 0;
	case 'c':
		if (cfg->manifest)
			return cfg_fail(err, errlen, "option -c/--config given twice");
		if (!*arg)
			return cfg_fail(err, errlen, "option -c/--config needs a file name");
		return set_string(&cfg->manifest, arg) ? cfg_fail(err, errlen, "out of memory") : 0;
	case 'o':
		if (!*arg)
			return cfg_fail(err, errlen, "option -o needs a value");
		return config_mount_opts(cfg, arg, err, errlen);
	case 'v':
		cfg->verbosity = (cfg->verbosity < 0 ? 0 : cfg->verbosity) + 1;
		return 0;
	case 'q':
		cfg->verbosity = -1;
		return 0;
	case OPT_CACHE_DIR:
		return set_cache_dir(cfg, arg, err, errlen);
	case OPT_SIZE_UNKNOWN:
		return set_size_unknown(cfg, arg, err, errlen);
	case OPT_CACHE_SIZE:
		return parse_cache_size(cfg, arg, err, errlen);
	case OPT_CACHE_MIN_FREE:
		return parse_min_free(cfg, arg, err, errlen);
	case OPT_PERSIST:
		cfg->persist = true;
		return 0;
	}
	if (fopt_set_arg(cli, c - OPT_FILE, arg, "--", err, errlen))
		return -1;
	scrub_arg(c - OPT_FILE, arg);
	return 0;
}

int cfg_set_mount_option(struct config *cfg, const char *opt, char *err, size_t errlen)
{
	char key[32], q[ESC_LEN];
	size_t klen = strcspn(opt, "=");
	const char *value = opt[klen] ? opt + klen + 1 : NULL;

	if (klen >= sizeof(key))
		return -2;
	for (size_t i = 0; i < klen; i++)
		key[i] = opt[i] == '_' ? '-' : opt[i];
	key[klen] = '\0';
	for (const struct option *o = long_opts; o->name; o++) {
		/* The mount-wide ones: per-file options are the manifest's. */
		if (strcmp(o->name, key) || o->val >= OPT_FILE || o->val == 'c' || o->val == 'h' ||
		    o->val == OPT_VERSION)
			continue;
		/* Messages quote the key as written: cache_size, not cache-size. */
		memcpy(key, opt, klen);
		cfg_esc(q, sizeof(q), key);
		if (o->has_arg == no_argument && value)
			return cfg_fail(err, errlen, "mount option '%s' takes no value", q);
		if (o->has_arg == required_argument && !value)
			return cfg_fail(err, errlen, "mount option '%s' needs a value", q);
		char *v = value ? strdup(value) : NULL;
		if (value && !v)
			return cfg_fail(err, errlen, "out of memory");
		int r = set_option(cfg, NULL, o->val, v, err, errlen);
		free(v);
		return r;
	}
	return -2;
}

static bool known_option(int c)
{
	return c == 'f' || c == 'c' || c == 'o' || c == 'v' || c == 'q' || c == OPT_CACHE_DIR ||
	       c == OPT_SIZE_UNKNOWN || c == OPT_CACHE_SIZE || c == OPT_CACHE_MIN_FREE ||
	       c == OPT_PERSIST || (c >= OPT_FILE && c < OPT_FILE + FO_COUNT);
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
		if (c == 1) {
			pos[(*npos)++] = optarg;
		} else if (c == 'h' || c == OPT_VERSION) {
			cfg->show_help = c == 'h';
			cfg->show_version = c == OPT_VERSION;
			return 0;
		} else if (c == '?' || c == ':') {
			return bad_option(c, argv[cur], err, errlen);
		} else if (!known_option(c)) {
			return cfg_fail(err, errlen, "unexpected option in '%s'",
			                cfg_esc(q, sizeof(q), argv[cur]));
		} else if (set_option(cfg, cli, c, optarg, err, errlen)) {
			return -1;
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
	    strncmp(src, "s3://", 5) && !(n && !strncmp(src + n, "://", 3)))
		return false;
	name = strndup(arg, (size_t)(eq - arg));
	named = name && !config_validate_name(name, NULL, 0);
	free(name);
	return named;
}

/* The first positional: the mount point. */
static int set_mountpoint(struct config *cfg, const char *arg, char *err, size_t errlen)
{
	char q[ESC_LEN];

	if (!strcmp(arg, "-"))
		return cfg_fail(err, errlen, "'-' is not a valid MOUNTPOINT (%s)", stdin_hint);
	if (!*arg)
		return cfg_fail(err, errlen, "empty MOUNTPOINT");
	if (looks_like_file(arg))
		return cfg_fail(err, errlen,
		                "missing MOUNTPOINT: '%s' is a NAME=SOURCE, the mountpoint comes "
		                "first",
		                cfg_esc(q, sizeof(q), arg));
	if (set_string(&cfg->mountpoint, arg))
		return cfg_fail(err, errlen, "out of memory");
	return 0;
}

/* The NAME=SOURCE arguments, with the options @cli. */
static int add_files(struct config *cfg, char **args, size_t n, const struct file_opts *cli,
                     char *err, size_t errlen)
{
	struct file_spec f;

	for (size_t i = 0; i < n; i++) {
		if (!strcmp(args[i], "-"))
			return cfg_fail(err, errlen, "'-' alone is not a file (%s)", stdin_hint);
		if (config_parse_file(args[i], cli, &f, err, errlen))
			return -1;
		scrub_arg(-1, args[i]);
		if (config_files_push(&cfg->files, f)) {
			config_file_spec_free(&f);
			return cfg_fail(err, errlen, "out of memory");
		}
	}
	return 0;
}

static const char *file_name_at(const void *files, size_t i)
{
	return ((const struct config_files *)files)->ptr[i].name;
}

/* Whole-config checks: names that clash, stdin read twice. The first
 * @nmanifest files come from the manifest. */
static int check_files(const struct config *cfg, size_t nmanifest, char *err, size_t errlen)
{
	char q1[ESC_LEN], q2[ESC_LEN];
	const struct file_spec *in = NULL, *f = cfg->files.ptr;
	struct clash c;
	int rc;

	for (size_t i = 0; i < cfg->files.len; i++) {
		if (f[i].kind != SOURCE_STDIN)
			continue;
		if (in)
			return cfg_fail(err, errlen,
			                "'%s' and '%s' both read standard input; only one file can",
			                cfg_esc(q1, sizeof(q1), in->name),
			                cfg_esc(q2, sizeof(q2), f[i].name));
		in = &f[i];
	}
	rc = find_clash(cfg->files.len, file_name_at, &cfg->files, &c);
	if (rc < 0)
		return cfg_fail(err, errlen, "out of memory");
	if (!rc)
		return 0;
	cfg_esc(q2, sizeof(q2), f[c.second].name);
	if (c.dup && c.first < nmanifest && c.second >= nmanifest)
		return cfg_fail(err, errlen,
		                "duplicate name '%s': in the manifest and on the command line", q2);
	if (c.dup)
		return cfg_fail(err, errlen, "duplicate name '%s'", q2);
	return fail_file_and_dir(err, errlen, f[c.first].name, f[c.second].name, "''");
}

/*
 * "streamfs MANIFEST MOUNTPOINT [-o OPTIONS]": the form mount.fuse3 runs
 * for an fstab line of type fuse.streamfs (fstab's first field is the
 * source). Two positionals, the second no NAME=SOURCE: a regular file
 * (a mount point is a directory), or a missing one followed by a directory, which can only
 * mean this form: a missing manifest then says so, not "mountpoint: No
 * such file or directory".
 */
static bool manifest_form(const struct config *cfg, char **pos, size_t npos)
{
	struct stat st;

	if (npos != 2 || cfg->manifest || looks_like_file(pos[1]))
		return false; /* "FILE a=cmd:x": a mount point that is no directory */
	if (stat(pos[0], &st) == 0)
		return S_ISREG(st.st_mode);
	return stat(pos[1], &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * The mount's source in the mount table is the manifest, as fstab names
 * it (unless -o fsname= says otherwise): mount(8) matches source and
 * target to see that a line is mounted already, so "mount -a" run again
 * leaves it alone instead of failing on a busy mount point. libfuse
 * splits -o at commas, unless escaped with a backslash.
 */
static int manifest_fsname(struct config *cfg, const char *manifest)
{
	for (size_t i = 0; i < cfg->fuse_opts.len; i++)
		if (!strncmp(cfg->fuse_opts.ptr[i], "fsname=", 7))
			return 0;
	size_t n = strlen(manifest);
	char *opt = malloc(7 + 2 * n + 1), *o;
	if (!opt)
		return -1;
	o = stpcpy(opt, "fsname=");
	for (const char *p = manifest; *p; p++) {
		if (*p == ',' || *p == '\\')
			*o++ = '\\';
		*o++ = *p;
	}
	*o = '\0';
	int r = strings_add(&cfg->fuse_opts, opt);
	free(opt);
	return r;
}

/* After the options: the mount point, the manifest, the files. */
static int parse_positionals(struct config *cfg, char **pos, size_t npos,
                             const struct file_opts *cli, char *err, size_t errlen)
{
	size_t nmanifest;

	if (!npos)
		return cfg_fail(err, errlen, "missing MOUNTPOINT");
	if (manifest_form(cfg, pos, npos)) {
		if (set_string(&cfg->manifest, pos[0]) || manifest_fsname(cfg, pos[0]))
			return cfg_fail(err, errlen, "out of memory");
		pos++;
		npos--;
	}
	if (set_mountpoint(cfg, pos[0], err, errlen))
		return -1;
	if (cfg->manifest && config_load_manifest(cfg, cfg->manifest, err, errlen))
		return -1;
	nmanifest = cfg->files.len;
	if (add_files(cfg, pos + 1, npos - 1, cli, err, errlen))
		return -1;
	return check_files(cfg, nmanifest, err, errlen);
}

int config_parse_args(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
	char prog[] = "streamfs";
	char *noargs[] = {prog, NULL};
	struct file_opts cli;
	char **av = NULL;
	char **pos = NULL;
	size_t npos = 0;
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
	if (!av || !pos) {
		cfg_fail(err, errlen, "out of memory");
		goto out;
	}
	memcpy(av, argv, (size_t)argc * sizeof(*av));
	if (parse_options(cfg, &cli, argc, av, pos, &npos, err, errlen))
		goto out;
	if (cfg->show_help || cfg->show_version)
		result = 0;
	else if (cfg->persist && (!cfg->cache_dir || cfg->memory_store))
		result = cfg_fail(
		    err, errlen,
		    "--persist needs --cache-dir DIR: the directory the cache is kept in%s",
		    cfg->memory_store ? " (not memory)" : "");
	else
		result = parse_positionals(cfg, pos, npos, &cli, err, errlen);
out:
	config_file_opts_free(&cli);
	free(av);
	free(pos);
	return result;
}

void config_free(struct config *cfg)
{
	if (!cfg)
		return;
	free(cfg->mountpoint);
	free(cfg->manifest);
	free(cfg->cache_dir);
	strings_free(&cfg->fuse_opts);
	for (size_t i = 0; i < cfg->files.len; i++)
		config_file_spec_free(&cfg->files.ptr[i]);
	config_files_free(&cfg->files);
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

/* "key=value" into @v. The copies made on the way are wiped. */
static int add_kv(struct config_strings *v, const char *key, const char *value)
{
	char *kv;
	int rc;

	if (asprintf(&kv, "%s=%s", key, value) < 0)
		return -1;
	rc = strings_add(v, kv);
	explicit_bzero(kv, strlen(kv));
	free(kv);
	return rc;
}

/* Wipe and free what @o holds: it was read from an @FILE. */
static void wipe_file_opts(struct file_opts *o)
{
	if (o->userpwd)
		explicit_bzero(o->userpwd, strlen(o->userpwd));
	for (size_t i = 0; i < o->headers.len; i++)
		explicit_bzero(o->headers.ptr[i], strlen(o->headers.ptr[i]));
	config_file_opts_free(o);
}

/*
 * One OPTION=VALUE of "streamfs add" into fields: @FILE values read here
 * (checked as on the command line), a relative netrc-file made absolute,
 * the rest passed on for the daemon to check.
 */
static int add_option(struct config_strings *v, char *arg, char *err, size_t errlen)
{
	char *key = arg + (strncmp(arg, "--", 2) ? 0 : 2);
	size_t klen = strcspn(key, "=");
	const char *value = key[klen] ? key + klen + 1 : NULL;
	struct file_opts o;
	char name[32];
	int id = -1, rc = 0;

	if (klen < sizeof(name)) {
		memcpy(name, key, klen);
		name[klen] = '\0';
		id = fopt_find(name);
	}
	config_file_opts_default(&o);
	if (id >= 0 && fopts[id].secret && value && value[0] == '@') {
		if (fopt_set_arg(&o, id, value, "", err, errlen))
			return -1;
		if (o.userpwd)
			rc = add_kv(v, "user", o.userpwd);
		for (size_t i = 0; !rc && i < o.headers.len; i++)
			rc = add_kv(v, "header", o.headers.ptr[i]);
		wipe_file_opts(&o);
	} else if (id == FO_NETRC_FILE && value && *value && value[0] != '/') {
		if (fopt_set(&o, id, value, "", err, errlen))
			return -1;
		rc = add_kv(v, "netrc-file", o.netrc_file);
		config_file_opts_free(&o);
	} else {
		/* A bad value is bad usage: refused here (exit 2), before
		 * the daemon is asked. */
		if (id >= 0 && fopt_set(&o, id, value, "", err, errlen))
			return -1;
		config_file_opts_free(&o);
		rc = strings_add(v, key);
		if (id >= 0)
			scrub_arg(id, key + klen + (value ? 1 : 0));
	}
	return rc ? cfg_fail(err, errlen, "out of memory") : 0;
}

int config_add_request(int argc, char **argv, char ***fields, size_t *nfields, char *err,
                       size_t errlen)
{
	struct config_strings v = VECTOR_INIT;

	*fields = NULL;
	*nfields = 0;
	if (argc < 1 || !argv[0])
		return cfg_fail(err, errlen, "missing NAME=SOURCE");
	if (strings_add(&v, "add") || strings_add(&v, argv[0])) {
		config_strv_free(v.ptr);
		return cfg_fail(err, errlen, "out of memory");
	}
	scrub_arg(-1, argv[0]);
	for (int i = 1; i < argc; i++) {
		if (add_option(&v, argv[i], err, errlen)) {
			config_strv_free(v.ptr);
			return -1;
		}
	}
	*fields = v.ptr;
	*nfields = v.len;
	return 0;
}
