/*
 * status.c - "streamfs status": walk the mount, read each file's
 * user.streamfs.* attributes, print a table or JSON.
 *
 * Contract in status.h. What this file keeps true:
 * - Only getxattr() and directory reads touch the mount: no file is
 *   opened or stat'ed, so no stream starts and nothing waits on one.
 * - The walk keeps one directory open and resolves no long path, however
 *   deep the names go (walk()).
 * - Text from the daemon reaches the terminal escaped (esc_text), and
 *   JSON is valid UTF-8 whatever the bytes (esc_json).
 */
#include "status.h"
#include "status_int.h"
#include "config.h"

#include "escape.h"
#include "vector.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *const attr_key[NATTR] = {
    [STATE] = "state",
    [BYTES] = "bytes",
    [SIZE] = "size",
    [SOURCE] = "source",
    [ERROR] = "error",
    [ERROR_OFFSET] = "error_offset",
    [EXIT_STATUS] = "exit_status",
    [HTTP_CODE] = "http_code",
    [HELD] = "held",
    [EVICTED] = "evicted",
    [DROPPED] = "dropped",
    [KEEP] = "keep",
    [PAUSED] = "paused",
};

static const char *const cattr_key[NCATTR] = {
    [C_SIZE] = "size",           [C_USED] = "used",     [C_MIN_FREE] = "min_free",
    [C_EVICTIONS] = "evictions", [C_PAUSED] = "paused",
};

/*
 * The value of user.streamfs.@key of @path, malloc'ed; "" when absent.
 * Values are sized from their real length (a source can be 60 KB), and
 * asked for again if they grew in between (a command's stderr).
 */
static char *get(const char *path, const char *key)
{
	char name[128], small[256];
	snprintf(name, sizeof(name), "user.streamfs.%s", key);
	ssize_t n = getxattr(path, name, small, sizeof(small) - 1);
	if (n >= 0) {
		small[n] = '\0';
		return strdup(small);
	}
	for (int tries = 0; errno == ERANGE && tries < 5; tries++) {
		ssize_t need = getxattr(path, name, NULL, 0);
		if (need < 0)
			break;
		char *buf = malloc((size_t)need + 1);
		if (!buf)
			break;
		n = getxattr(path, name, buf, (size_t)need);
		if (n >= 0) {
			buf[n] = '\0';
			return buf;
		}
		free(buf);
	}
	return strdup("");
}

/* The row of file @leaf in the directory @dirfd; @rel is its name in the
 * mount. Through /proc/self/fd the path stays short however deep the
 * file is (a name may be 4095 bytes, under a mount point of any length). */
static int add_row(struct rows *rows, int dirfd, const char *leaf, char *rel)
{
	char path[320];
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, leaf);
	if (rows_push(rows, (struct row){.name = rel, .rate = -1, .eta = -1}) < 0) {
		free(rel);
		return -ENOMEM;
	}
	struct row *r = &rows->ptr[rows->len - 1];
	for (int a = 0; a < NATTR; a++) {
		r->v[a] = get(path, attr_key[a]);
		if (!r->v[a])
			return -ENOMEM;
	}
	return 0;
}

/* An entry of a directory of the walk. */
struct entry {
	char *name;
	bool isdir;
};

DEFINE_VECTOR(entries, struct entry);

/* One directory of the walk: its entries, read at once, and the next. */
struct level {
	struct entries e;
	size_t next;
	size_t rel_len; /* its name's length in the walk's path */
};

static void level_free(struct level *l)
{
	for (size_t i = 0; i < l->e.len; i++)
		free(l->e.ptr[i].name);
	entries_free(&l->e);
}

/* Read every entry of the directory @fd (which stays open) into @l. */
static int level_read(int fd, struct level *l)
{
	memset(l, 0, sizeof(*l));
	int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		int e = errno;
		if (dfd >= 0)
			close(dfd);
		return -e;
	}
	struct dirent *de;
	int r = 0;
	while (r == 0 && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		struct entry en = {.name = strdup(de->d_name), .isdir = de->d_type == DT_DIR};
		if (!en.name || entries_push(&l->e, en) < 0) {
			free(en.name);
			r = -ENOMEM;
		}
	}
	closedir(d);
	return r;
}

DEFINE_VECTOR(levels, struct level);

struct walk {
	int fd;               /* the directory of the top level */
	struct levels levels; /* the directories being walked, root first */
	char rel[8192];       /* the top level's name in the mount */
};

/* Start the walk: read the directory @fd into the first level. */
static int walk_start(struct walk *w, int fd)
{
	struct level l;
	w->fd = fd;
	int r = level_read(fd, &l);
	if (levels_push(&w->levels, l) < 0) {
		level_free(&l);
		return -ENOMEM;
	}
	return r;
}

/* Go down into @name of the top level; a directory that went away
 * meanwhile (streamfs rm) is skipped. */
static int walk_down(struct walk *w, const char *name)
{
	struct level l;
	int fd = openat(w->fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	int r = level_read(fd, &l);
	l.rel_len = strlen(w->rel);
	if (levels_push(&w->levels, l) < 0) {
		level_free(&l);
		close(fd);
		return -ENOMEM;
	}
	snprintf(w->rel + l.rel_len, sizeof(w->rel) - l.rel_len, "%s%s", l.rel_len ? "/" : "",
	         name);
	close(w->fd);
	w->fd = fd;
	return r;
}

/* Back to the parent of the top level, through ".." (the kernel's, no
 * lookup by the daemon), so no path is ever resolved twice. */
static int walk_up(struct walk *w)
{
	struct level *l = &w->levels.ptr[--w->levels.len];
	w->rel[l->rel_len] = '\0';
	level_free(l);
	if (w->levels.len == 0)
		return 0;
	int fd = openat(w->fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	close(w->fd);
	w->fd = fd;
	return 0;
}

/*
 * Every file under @root. A name can be ~2000 directories deep: the walk
 * keeps one directory open and its levels on the heap, and resolves no
 * long path (that would cost a walk of every level, for every level).
 */
static int walk(const char *root, struct rows *rows)
{
	struct walk w = {.levels = VECTOR_INIT};
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = walk_start(&w, fd);
	while (r == 0 && w.levels.len > 0) {
		struct level *l = &w.levels.ptr[w.levels.len - 1];
		if (l->next == l->e.len) {
			r = walk_up(&w);
			continue;
		}
		const struct entry *en = &l->e.ptr[l->next++];
		if (en->isdir) {
			r = walk_down(&w, en->name);
			continue;
		}
		char *sub;
		if (asprintf(&sub, "%s%s%s", w.rel, w.rel[0] ? "/" : "", en->name) < 0)
			r = -ENOMEM;
		else
			r = add_row(rows, w.fd, en->name, sub);
	}
	while (w.levels.len > 0)
		level_free(&w.levels.ptr[--w.levels.len]);
	levels_free(&w.levels);
	close(w.fd);
	return r;
}

static int cmp_rows(const void *a, const void *b)
{
	return strcmp(((const struct row *)a)->name, ((const struct row *)b)->name);
}

/* A JSON string of @s: strict UTF-8 whatever the bytes (escape.h). */
static void json_str(const char *s)
{
	char *j = esc_json_dup(s);
	fputs(j ? j : "null", stdout);
	free(j);
}

/* A number from the daemon, or null when absent (or not a number). */
static void json_num_or_null(const char *v)
{
	const char *p = v + (v[0] == '-');
	bool num = p[0] != '\0' && strspn(p, "0123456789") == strlen(p);
	fputs(num ? v : "null", stdout);
}

static void json_str_or_null(const char *v)
{
	if (v[0])
		json_str(v);
	else
		fputs("null", stdout);
}

/* A name that is not UTF-8 shows with U+FFFD in "name"; its exact bytes
 * go in "name_hex" too, so a script can still open the file. */
static void json_name(const char *name)
{
	fputs("\"name\": ", stdout);
	json_str(name);
	if (utf8_valid(name, strlen(name)))
		return;
	fputs(", \"name_hex\": \"", stdout);
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		printf("%02x", *p);
	putchar('"');
}

/* Attribute @a: a string, a string or null (error), or a number or null. */
static void json_attr(int a, const char *v)
{
	if (a == STATE || a == SOURCE)
		json_str(v);
	else if (a == ERROR || a == PAUSED)
		json_str_or_null(v);
	else
		json_num_or_null(v);
}

/* The root's cache_* attributes, malloc'ed ("" when absent). */
static int get_cache(const char *mnt, char **c)
{
	char key[64];
	int r = 0;
	for (int a = 0; a < NCATTR; a++) {
		snprintf(key, sizeof(key), "cache_%s", cattr_key[a]);
		c[a] = get(mnt, key);
		if (!c[a])
			r = -ENOMEM;
	}
	return r;
}

/* A measured number, or null for -1; seconds are rounded up, as the
 * watch's ETA column rounds them ("0" only once nothing is left). */
static void json_measure(double v, bool up)
{
	if (v < 0)
		fputs("null", stdout);
	else
		printf("%.0f", up ? ceil(v) : v);
}

void status_total(const struct rows *rows, struct status_total *t)
{
	bool measured = false, eta_known = true;
	*t = (struct status_total){.files = rows->len, .sized = true};
	for (size_t i = 0; i < rows->len; i++) {
		const struct row *r = &rows->ptr[i];
		const char *st = r->v[STATE];
		bool failed = !strcmp(st, "failed") || !strcmp(st, "cancelled");
		uint64_t bytes = strtoull(r->v[BYTES], NULL, 10);
		t->bytes += bytes;
		/* A failed stream ended where it stopped: that is its size here. */
		t->sized = t->sized && (r->v[SIZE][0] || failed);
		t->size += r->v[SIZE][0] ? strtoull(r->v[SIZE], NULL, 10) : bytes;
		if (r->rate >= 0) {
			t->rate += r->rate;
			measured = true;
		}
		t->ended += failed || !strcmp(st, "complete");
		t->failed += failed;
		if (failed) /* it will not finish: no part of the wait */
			continue;
		if (r->eta < 0)
			eta_known = false;
		else if (r->eta > t->eta)
			t->eta = r->eta;
	}
	if (!measured)
		t->rate = -1;
	if (!eta_known)
		t->eta = -1;
}

static void json_total(const struct rows *rows)
{
	struct status_total t;
	status_total(rows, &t);
	printf(", \"total\": {\"files\": %zu, \"bytes\": %llu, \"size\": ", t.files,
	       (unsigned long long)t.bytes);
	if (t.sized)
		printf("%llu", (unsigned long long)t.size);
	else
		fputs("null", stdout);
	fputs(", \"rate\": ", stdout);
	json_measure(t.rate, false);
	fputs(", \"eta\": ", stdout);
	json_measure(t.eta, true);
	putchar('}');
}

void status_print_json(const char *mnt, const struct rows *rows, char *const *c, bool compact)
{
	fputs("{\"mountpoint\": ", stdout);
	json_str(mnt);
	if (c[C_USED][0]) {
		fputs(", \"cache\": {", stdout);
		for (int a = 0; a < NCATTR; a++) {
			printf("%s\"%s\": ", a ? ", " : "", cattr_key[a]);
			json_num_or_null(c[a]);
		}
		putchar('}');
	}
	fputs(", \"files\": [", stdout);
	for (size_t i = 0; i < rows->len; i++) {
		const struct row *r = &rows->ptr[i];
		fputs(i ? (compact ? ", {" : ",\n  {") : (compact ? "{" : "\n  {"), stdout);
		json_name(r->name);
		for (int a = 0; a < NATTR; a++) {
			printf(", \"%s\": ", attr_key[a]);
			json_attr(a, r->v[a]);
		}
		fputs(", \"rate\": ", stdout);
		json_measure(r->rate, false);
		fputs(", \"eta\": ", stdout);
		json_measure(r->eta, true);
		putchar('}');
	}
	fputs(rows->len && !compact ? "\n]" : "]", stdout);
	json_total(rows);
	fputs("}\n", stdout);
}

/* The table's text of a row, escaped for a terminal (escape.h). */
struct shown {
	char *name, *source, *error;
};

/* Characters (not bytes) in the UTF-8 string @s. */
static int chars(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

/* @s left-aligned in @w characters: padded, or cut at a character. */
static void cell(const char *s, int w)
{
	int n = 0;
	const char *p = s;
	for (; *p; p++) {
		if (((unsigned char)*p & 0xc0) != 0x80 && n++ == w)
			break;
	}
	fwrite(s, 1, (size_t)(p - s), stdout);
	printf("%*s", w - (n < w ? n : w), "");
}

static int width(const struct rows *rows, const struct shown *sh, int which, const char *head,
                 int max)
{
	int w = (int)strlen(head);
	for (size_t i = 0; i < rows->len; i++) {
		const struct row *r = &rows->ptr[i];
		const char *v = which == 0   ? sh[i].name
		                : which == 1 ? status_state(r)
		                : which == 2 ? r->v[BYTES]
		                : which == 3 ? r->v[SIZE]
		                : which == 5 ? r->v[HELD]
		                             : sh[i].source;
		int l = chars(v);
		if (l > w)
			w = l;
	}
	return w > max ? max : w;
}

const char *status_state(const struct row *r)
{
	/* A paused stream is running; "paused" is what a user wants to see,
	 * and why is in the error column. */
	return r->v[PAUSED][0] ? "paused" : r->v[STATE];
}

char *status_error_text(const struct row *r)
{
	char *t = NULL;
	if (!r->v[ERROR][0] && r->v[PAUSED][0]) {
		char *p = esc_text_dup(r->v[PAUSED]);
		if (!p || asprintf(&t, "(%s)", p) < 0)
			t = NULL;
		free(p);
	} else if (!r->v[ERROR][0]) {
		t = strdup("");
	} else if (!r->v[ERROR_OFFSET][0]) {
		t = esc_text_dup(r->v[ERROR]);
	} else {
		char *e = esc_text_dup(r->v[ERROR]);
		if (!e || asprintf(&t, "%s (at byte %s)", e, r->v[ERROR_OFFSET]) < 0)
			t = NULL;
		free(e);
	}
	return t;
}

static int shown_fill(const struct row *r, struct shown *sh)
{
	sh->name = esc_text_dup(r->name);
	sh->source = esc_text_dup(r->v[SOURCE]);
	sh->error = status_error_text(r);
	return sh->name && sh->source && sh->error ? 0 : -ENOMEM;
}

static void shown_free(struct shown *sh, size_t n)
{
	for (size_t i = 0; sh && i < n; i++) {
		free(sh[i].name);
		free(sh[i].source);
		free(sh[i].error);
	}
	free(sh);
}

/* A budget, or a file that lost bytes (evicted, dropped) or waits for
 * room: worth a HELD column. Otherwise the table stays as it was. */
static bool show_held(const struct rows *rows, char *const *c)
{
	if (c[C_SIZE][0])
		return true;
	for (size_t i = 0; i < rows->len; i++) {
		char *const *v = rows->ptr[i].v;
		if (v[EVICTED][0] || v[KEEP][0] || v[PAUSED][0])
			return true;
	}
	return false;
}

static int print_table(const struct rows *rows, char *const *c)
{
	struct shown *sh = calloc(rows->len + 1, sizeof(*sh));
	for (size_t i = 0; sh && i < rows->len; i++) {
		if (shown_fill(&rows->ptr[i], &sh[i]) < 0) {
			shown_free(sh, i + 1);
			sh = NULL;
		}
	}
	if (!sh)
		return -ENOMEM;
	int wn = width(rows, sh, 0, "NAME", 40);
	int ws = width(rows, sh, 1, "STATE", 10);
	int wb = width(rows, sh, 2, "BYTES", 20);
	int wz = width(rows, sh, 3, "SIZE", 20);
	int wo = width(rows, sh, 4, "SOURCE", 40);
	bool held = show_held(rows, c);
	int wh = held ? width(rows, sh, 5, "HELD", 20) : 0;
	printf("%-*s  %-*s  %*s  ", wn, "NAME", ws, "STATE", wb, "BYTES");
	if (held)
		printf("%*s  ", wh, "HELD");
	printf("%*s  %-*s  %s\n", wz, "SIZE", wo, "SOURCE", "ERROR");
	for (size_t i = 0; i < rows->len; i++) {
		const struct row *r = &rows->ptr[i];
		cell(sh[i].name, wn);
		printf("  %-*s  %*s  ", ws, status_state(r), wb, r->v[BYTES]);
		if (held)
			printf("%*s  ", wh, r->v[HELD]);
		printf("%*s  ", wz, r->v[SIZE][0] ? r->v[SIZE] : "-");
		cell(sh[i].source, wo);
		printf("  %s\n", sh[i].error);
	}
	if (c[C_SIZE][0] && c[C_USED][0])
		printf("cache: %s of %s bytes used, %s evictions\n", c[C_USED], c[C_SIZE],
		       c[C_EVICTIONS][0] ? c[C_EVICTIONS] : "0");
	shown_free(sh, rows->len);
	return 0;
}

void status_free(struct rows *rows, char **c)
{
	for (size_t i = 0; i < rows->len; i++) {
		struct row *r = &rows->ptr[i];
		free(r->name);
		for (int a = 0; a < NATTR; a++)
			free(r->v[a]);
	}
	rows_free(rows);
	for (int a = 0; a < NCATTR; a++) {
		free(c[a]);
		c[a] = NULL;
	}
}

int status_read(const char *mnt, struct rows *rows, char **c)
{
	int r = walk(mnt, rows);
	if (r == 0 && rows->len)
		qsort(rows->ptr, rows->len, sizeof(*rows->ptr), cmp_rows);
	for (size_t i = 0; i < rows->len; i++)
		if (!strcmp(rows->ptr[i].v[STATE], "complete"))
			rows->ptr[i].eta = 0;
	return r == 0 ? get_cache(mnt, c) : r;
}

static const char status_usage[] =
    "usage: streamfs status [--json] [--watch [--interval=SECONDS]] MOUNTPOINT";

/* The options; returns -1 to go on, or the exit code (help, bad usage). */
static int parse_status_args(int argc, char **argv, bool *json, bool *watch, double *interval)
{
	static const struct option longopts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"watch", no_argument, NULL, 'w'},
	    {"interval", required_argument, NULL, 'n'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	bool interval_given = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:jwn:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			*json = true;
			break;
		case 'w':
			*watch = true;
			break;
		case 'n':
			/* At least a tenth of a second: each frame reads every
			 * attribute of every file. */
			if (config_parse_seconds(optarg, interval) < 0 || *interval < 0.1) {
				char *e = esc_text_dup(optarg);
				fprintf(stderr,
				        "streamfs: bad --interval value '%s': expected seconds, at "
				        "least 0.1\n",
				        e ? e : "");
				free(e);
				return 2;
			}
			interval_given = true;
			break;
		case 'h':
			puts(status_usage);
			return 0;
		default:
			fprintf(stderr, "streamfs: %s\n", status_usage);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "streamfs: %s\n", status_usage);
		return 2;
	}
	if (interval_given && !*watch) {
		fprintf(stderr, "streamfs: --interval goes with --watch\n");
		return 2;
	}
	return -1;
}

int status_main(int argc, char **argv)
{
	bool json = false, watch = false;
	double interval = 1;
	int rc = parse_status_args(argc, argv, &json, &watch, &interval);
	if (rc >= 0)
		return rc;
	const char *mnt = argv[optind];
	char pid[32];
	if (getxattr(mnt, "user.streamfs.pid", pid, sizeof(pid)) < 0) {
		fprintf(stderr, "streamfs: '%s' is not a streamfs mount: %s\n", mnt,
		        errno == ENODATA || errno == ENOTSUP ? "no streamfs attributes"
		                                             : strerror(errno));
		return 1;
	}
	if (watch)
		return status_watch(mnt, json, interval);
	struct rows rows = VECTOR_INIT;
	char *c[NCATTR] = {NULL};
	int r = status_read(mnt, &rows, c);
	if (r == 0 && json)
		status_print_json(mnt, &rows, c, false);
	else if (r == 0)
		r = print_table(&rows, c);
	status_free(&rows, c);
	if (r < 0) {
		fprintf(stderr, "streamfs: cannot list '%s': %s\n", mnt, strerror(-r));
		return 1;
	}
	return 0;
}
