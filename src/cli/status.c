/*
 * status.c - see status.h.
 */
#include "status.h"

#include "escape.h"

#include <dirent.h>
#include <errno.h>
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

/* Every field is malloc'ed, "" when the attribute is absent. */
struct row {
	char *name; /* relative to the mount point, as bytes */
	char *state, *bytes, *size, *source, *error, *error_offset, *exit_status, *http_code;
	char *held, *evicted, *dropped, *keep, *paused; /* the store budget */
};

/* The root's budget attributes, malloc'ed ("" when absent). */
struct cache_row {
	char *size, *used, *min_free, *evictions, *paused;
};

struct rows {
	struct row *v;
	size_t n, cap;
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

static struct row *new_row(struct rows *rows)
{
	if (rows->n == rows->cap) {
		size_t cap = rows->cap ? rows->cap * 2 : 32;
		struct row *v = realloc(rows->v, cap * sizeof(*v));
		if (!v)
			return NULL;
		rows->v = v;
		rows->cap = cap;
	}
	struct row *r = &rows->v[rows->n++];
	memset(r, 0, sizeof(*r));
	return r;
}

/* The row of file @leaf in the directory @dirfd; @rel is its name in the
 * mount. Through /proc/self/fd the path stays short however deep the
 * file is (a name may be 4095 bytes, under a mount point of any length). */
static int add_row(struct rows *rows, int dirfd, const char *leaf, char *rel)
{
	char path[320];
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, leaf);
	struct row *r = new_row(rows);
	if (!r) {
		free(rel);
		return -ENOMEM;
	}
	r->name = rel;
	r->state = get(path, "state");
	r->bytes = get(path, "bytes");
	r->size = get(path, "size");
	r->source = get(path, "source");
	r->error = get(path, "error");
	r->error_offset = get(path, "error_offset");
	r->exit_status = get(path, "exit_status");
	r->http_code = get(path, "http_code");
	r->held = get(path, "held");
	r->evicted = get(path, "evicted");
	r->dropped = get(path, "dropped");
	r->keep = get(path, "keep");
	r->paused = get(path, "paused");
	if (!r->state || !r->bytes || !r->size || !r->source || !r->error || !r->error_offset ||
	    !r->exit_status || !r->http_code || !r->held || !r->evicted || !r->dropped ||
	    !r->keep || !r->paused)
		return -ENOMEM;
	return 0;
}

/* One directory of the walk: its entries, read at once, and the next. */
struct level {
	char **names;
	bool *isdir;
	size_t n, next;
	size_t rel_len; /* its name's length in the walk's path */
};

static void level_free(struct level *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->names[i]);
	free(l->names);
	free(l->isdir);
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
	size_t cap = 0;
	struct dirent *de;
	int r = 0;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (l->n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nv = realloc(l->names, cap * sizeof(*nv));
			bool *dv = nv ? realloc(l->isdir, cap * sizeof(*dv)) : NULL;
			if (nv)
				l->names = nv;
			if (!dv) {
				r = -ENOMEM;
				break;
			}
			l->isdir = dv;
		}
		if (!(l->names[l->n] = strdup(de->d_name))) {
			r = -ENOMEM;
			break;
		}
		l->isdir[l->n++] = de->d_type == DT_DIR;
	}
	closedir(d);
	return r;
}

struct walk {
	int fd;              /* the directory of the top level */
	struct level *v;     /* the directories being walked, root first */
	size_t depth, cap;
	char rel[8192];      /* the top level's name in the mount */
};

/* Go down into @name of the top level; a directory that went away
 * meanwhile (streamfs rm) is skipped. */
static int walk_down(struct walk *w, const char *name)
{
	int fd = openat(w->fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	if (w->depth == w->cap) {
		size_t cap = w->cap * 2;
		struct level *v = realloc(w->v, cap * sizeof(*v));
		if (!v) {
			close(fd);
			return -ENOMEM;
		}
		w->v = v;
		w->cap = cap;
	}
	size_t len = strlen(w->rel);
	snprintf(w->rel + len, sizeof(w->rel) - len, "%s%s", len ? "/" : "", name);
	struct level *l = &w->v[w->depth++];
	int r = level_read(fd, l);
	l->rel_len = len;
	close(w->fd);
	w->fd = fd;
	return r;
}

/* Back to the parent of the top level, through ".." (the kernel's, no
 * lookup by the daemon), so no path is ever resolved twice. */
static int walk_up(struct walk *w)
{
	struct level *l = &w->v[--w->depth];
	w->rel[l->rel_len] = '\0';
	level_free(l);
	if (w->depth == 0)
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
	struct walk w = {.cap = 16};
	w.fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w.fd < 0)
		return -errno;
	w.v = malloc(w.cap * sizeof(*w.v));
	int r = w.v ? level_read(w.fd, &w.v[0]) : -ENOMEM;
	if (w.v)
		w.depth = 1;
	while (r == 0 && w.depth > 0) {
		struct level *l = &w.v[w.depth - 1];
		if (l->next == l->n) {
			r = walk_up(&w);
			continue;
		}
		size_t i = l->next++;
		if (l->isdir[i]) {
			r = walk_down(&w, l->names[i]);
			continue;
		}
		char *sub;
		if (asprintf(&sub, "%s%s%s", w.rel, w.rel[0] ? "/" : "", l->names[i]) < 0)
			r = -ENOMEM;
		else
			r = add_row(rows, w.fd, l->names[i], sub);
	}
	while (w.depth > 0)
		level_free(&w.v[--w.depth]);
	free(w.v);
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

static int get_cache(const char *mnt, struct cache_row *c)
{
	c->size = get(mnt, "cache_size");
	c->used = get(mnt, "cache_used");
	c->min_free = get(mnt, "cache_min_free");
	c->evictions = get(mnt, "cache_evictions");
	c->paused = get(mnt, "cache_paused");
	return c->size && c->used && c->min_free && c->evictions && c->paused ? 0 : -ENOMEM;
}

static void free_cache(struct cache_row *c)
{
	free(c->size);
	free(c->used);
	free(c->min_free);
	free(c->evictions);
	free(c->paused);
}

static void print_json(const char *mnt, const struct rows *rows, const struct cache_row *c)
{
	fputs("{\"mountpoint\": ", stdout);
	json_str(mnt);
	if (c->used[0]) {
		fputs(", \"cache\": {\"size\": ", stdout);
		json_num_or_null(c->size);
		fputs(", \"used\": ", stdout);
		json_num_or_null(c->used);
		fputs(", \"min_free\": ", stdout);
		json_num_or_null(c->min_free);
		fputs(", \"evictions\": ", stdout);
		json_num_or_null(c->evictions);
		fputs(", \"paused\": ", stdout);
		json_num_or_null(c->paused);
		putchar('}');
	}
	fputs(", \"files\": [", stdout);
	for (size_t i = 0; i < rows->n; i++) {
		const struct row *r = &rows->v[i];
		fputs(i ? ",\n  {" : "\n  {", stdout);
		json_name(r->name);
		fputs(", \"state\": ", stdout);
		json_str(r->state);
		fputs(", \"bytes\": ", stdout);
		json_num_or_null(r->bytes);
		fputs(", \"size\": ", stdout);
		json_num_or_null(r->size);
		fputs(", \"source\": ", stdout);
		json_str(r->source);
		fputs(", \"error\": ", stdout);
		json_str_or_null(r->error);
		fputs(", \"error_offset\": ", stdout);
		json_num_or_null(r->error_offset);
		fputs(", \"exit_status\": ", stdout);
		json_num_or_null(r->exit_status);
		fputs(", \"http_code\": ", stdout);
		json_num_or_null(r->http_code);
		fputs(", \"held\": ", stdout);
		json_num_or_null(r->held);
		fputs(", \"evicted\": ", stdout);
		json_num_or_null(r->evicted);
		fputs(", \"dropped\": ", stdout);
		json_num_or_null(r->dropped);
		fputs(", \"keep\": ", stdout);
		json_num_or_null(r->keep);
		fputs(", \"paused\": ", stdout);
		json_str_or_null(r->paused);
		putchar('}');
	}
	fputs(rows->n ? "\n]}\n" : "]}\n", stdout);
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
	for (size_t i = 0; i < rows->n; i++) {
		const struct row *r = &rows->v[i];
		const char *v = which == 0   ? sh[i].name
				: which == 1 ? (r->paused[0] ? "paused" : r->state)
				: which == 2 ? r->bytes
				: which == 3 ? r->size
				: which == 5 ? r->held
					     : sh[i].source;
		int l = chars(v);
		if (l > w)
			w = l;
	}
	return w > max ? max : w;
}

static int shown_fill(const struct row *r, struct shown *sh)
{
	sh->name = esc_text_dup(r->name);
	sh->source = esc_text_dup(r->source);
	if (!r->error[0] && r->paused[0]) {
		if (asprintf(&sh->error, "(%s)", r->paused) < 0)
			sh->error = NULL;
	} else if (!r->error[0]) {
		sh->error = strdup("");
	} else if (!r->error_offset[0]) {
		sh->error = esc_text_dup(r->error);
	} else {
		char *e = esc_text_dup(r->error);
		if (!e || asprintf(&sh->error, "%s (at byte %s)", e, r->error_offset) < 0)
			sh->error = NULL;
		free(e);
	}
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
static bool show_held(const struct rows *rows, const struct cache_row *c)
{
	if (c->size[0])
		return true;
	for (size_t i = 0; i < rows->n; i++)
		if (rows->v[i].evicted[0] || rows->v[i].keep[0] || rows->v[i].paused[0])
			return true;
	return false;
}

static int print_table(const struct rows *rows, const struct cache_row *c)
{
	struct shown *sh = calloc(rows->n + 1, sizeof(*sh));
	for (size_t i = 0; sh && i < rows->n; i++) {
		if (shown_fill(&rows->v[i], &sh[i]) < 0) {
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
	for (size_t i = 0; i < rows->n; i++) {
		const struct row *r = &rows->v[i];
		cell(sh[i].name, wn);
		/* A paused stream is running; "paused" is what a user wants
		 * to see, and why is in the error column. */
		printf("  %-*s  %*s  ", ws, r->paused[0] ? "paused" : r->state, wb, r->bytes);
		if (held)
			printf("%*s  ", wh, r->held);
		printf("%*s  ", wz, r->size[0] ? r->size : "-");
		cell(sh[i].source, wo);
		printf("  %s\n", sh[i].error);
	}
	if (c->size[0] && c->used[0])
		printf("cache: %s of %s bytes used, %s evictions\n", c->used, c->size,
		       c->evictions[0] ? c->evictions : "0");
	shown_free(sh, rows->n);
	return 0;
}

static void free_rows(struct rows *rows)
{
	for (size_t i = 0; i < rows->n; i++) {
		struct row *r = &rows->v[i];
		free(r->name);
		free(r->state);
		free(r->bytes);
		free(r->size);
		free(r->source);
		free(r->error);
		free(r->error_offset);
		free(r->exit_status);
		free(r->http_code);
		free(r->held);
		free(r->evicted);
		free(r->dropped);
		free(r->keep);
		free(r->paused);
	}
	free(rows->v);
	memset(rows, 0, sizeof(*rows));
}

int status_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"json", no_argument, NULL, 'j'},
		{"watch", no_argument, NULL, 'w'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	bool json = false, watch = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+jwh", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'w':
			watch = true;
			break;
		case 'h':
			puts("usage: streamfs status [--json] [--watch] MOUNTPOINT");
			return 0;
		default:
			fprintf(stderr, "streamfs: usage: streamfs status [--json] [--watch] MOUNTPOINT\n");
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "streamfs: usage: streamfs status [--json] [--watch] MOUNTPOINT\n");
		return 2;
	}
	const char *mnt = argv[optind];
	char pid[32];
	if (getxattr(mnt, "user.streamfs.pid", pid, sizeof(pid)) < 0) {
		fprintf(stderr, "streamfs: '%s' is not a streamfs mount: %s\n", mnt,
			errno == ENODATA || errno == ENOTSUP ? "no streamfs attributes"
							     : strerror(errno));
		return 1;
	}
	for (;;) {
		struct rows rows = {0};
		int r = walk(mnt, &rows);
		if (r == 0 && rows.n)
			qsort(rows.v, rows.n, sizeof(*rows.v), cmp_rows);
		if (r == 0 && watch && !json && isatty(STDOUT_FILENO))
			fputs("\033[H\033[2J", stdout);
		struct cache_row cr = {0};
		if (r == 0)
			r = get_cache(mnt, &cr);
		if (r == 0 && json)
			print_json(mnt, &rows, &cr);
		else if (r == 0)
			r = print_table(&rows, &cr);
		free_cache(&cr);
		if (r < 0) {
			fprintf(stderr, "streamfs: cannot list '%s': %s\n", mnt, strerror(-r));
			free_rows(&rows);
			return 1;
		}
		free_rows(&rows);
		if (!watch)
			return 0;
		if (!json && !isatty(STDOUT_FILENO))
			putchar('\n');
		fflush(stdout);
		struct timespec ts = {1, 0};
		nanosleep(&ts, NULL);
	}
}
