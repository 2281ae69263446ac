/*
 * status.c - see status.h.
 */
#include "status.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

struct row {
	char *name;
	char state[32], bytes[32], size[32], exit_status[32], error_offset[32], http_code[32];
	char held[32], evicted[32], dropped[32], keep[32], paused[64];
	char source[1024], error[1024];
};

/* The root's budget attributes ("" when absent). */
struct cache_row {
	char size[32], used[32], min_free[32], evictions[32], paused[32];
};

struct rows {
	struct row *v;
	size_t n, cap;
};

static void get(const char *path, const char *key, char *buf, size_t size)
{
	char name[128];
	snprintf(name, sizeof(name), "user.streamfs.%s", key);
	ssize_t n = getxattr(path, name, buf, size - 1);
	buf[n > 0 ? n : 0] = '\0';
}

static int walk(const char *root, const char *rel, struct rows *rows)
{
	char dirpath[8192];
	snprintf(dirpath, sizeof(dirpath), "%s%s%s", root, rel[0] ? "/" : "", rel);
	DIR *d = opendir(dirpath);
	if (!d)
		return -errno;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char sub[4096], path[8192];
		snprintf(sub, sizeof(sub), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
		if (de->d_type == DT_DIR) {
			walk(root, sub, rows);
			continue;
		}
		if (rows->n == rows->cap) {
			size_t cap = rows->cap ? rows->cap * 2 : 32;
			struct row *v = realloc(rows->v, cap * sizeof(*v));
			if (!v)
				break;
			rows->v = v;
			rows->cap = cap;
		}
		struct row *r = &rows->v[rows->n];
		memset(r, 0, sizeof(*r));
		if (!(r->name = strdup(sub)))
			break;
		rows->n++;
		snprintf(path, sizeof(path), "%s/%s", root, sub);
		get(path, "state", r->state, sizeof(r->state));
		get(path, "bytes", r->bytes, sizeof(r->bytes));
		get(path, "size", r->size, sizeof(r->size));
		get(path, "source", r->source, sizeof(r->source));
		get(path, "error", r->error, sizeof(r->error));
		get(path, "error_offset", r->error_offset, sizeof(r->error_offset));
		get(path, "exit_status", r->exit_status, sizeof(r->exit_status));
		get(path, "http_code", r->http_code, sizeof(r->http_code));
		get(path, "held", r->held, sizeof(r->held));
		get(path, "evicted", r->evicted, sizeof(r->evicted));
		get(path, "dropped", r->dropped, sizeof(r->dropped));
		get(path, "keep", r->keep, sizeof(r->keep));
		get(path, "paused", r->paused, sizeof(r->paused));
	}
	closedir(d);
	return 0;
}

static int cmp_rows(const void *a, const void *b)
{
	return strcmp(((const struct row *)a)->name, ((const struct row *)b)->name);
}

static void json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", stdout);
		else if (*p == '\t')
			fputs("\\t", stdout);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void json_num_or_null(const char *v)
{
	fputs(v[0] ? v : "null", stdout);
}

static void get_cache(const char *mnt, struct cache_row *c)
{
	get(mnt, "cache_size", c->size, sizeof(c->size));
	get(mnt, "cache_used", c->used, sizeof(c->used));
	get(mnt, "cache_min_free", c->min_free, sizeof(c->min_free));
	get(mnt, "cache_evictions", c->evictions, sizeof(c->evictions));
	get(mnt, "cache_paused", c->paused, sizeof(c->paused));
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
		fputs("\"name\": ", stdout);
		json_str(r->name);
		fputs(", \"state\": ", stdout);
		json_str(r->state);
		fputs(", \"bytes\": ", stdout);
		json_num_or_null(r->bytes);
		fputs(", \"size\": ", stdout);
		json_num_or_null(r->size);
		fputs(", \"source\": ", stdout);
		json_str(r->source);
		fputs(", \"error\": ", stdout);
		if (r->error[0])
			json_str(r->error);
		else
			fputs("null", stdout);
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
		if (r->paused[0])
			json_str(r->paused);
		else
			fputs("null", stdout);
		putchar('}');
	}
	fputs(rows->n ? "\n]}\n" : "]}\n", stdout);
}

static int width(const struct rows *rows, size_t off, const char *head, int max)
{
	int w = (int)strlen(head);
	for (size_t i = 0; i < rows->n; i++) {
		const char *v = off == 0 ? rows->v[i].name : (const char *)&rows->v[i] + off;
		int l = (int)strlen(v);
		if (l > w)
			w = l;
	}
	return w > max ? max : w;
}

/* A budget, or a file that lost bytes (evicted, dropped): worth a HELD
 * column. Otherwise the table stays as it always was. */
static bool show_held(const struct rows *rows, const struct cache_row *c)
{
	if (c->size[0])
		return true;
	for (size_t i = 0; i < rows->n; i++)
		if (rows->v[i].evicted[0] || rows->v[i].keep[0] || rows->v[i].paused[0])
			return true;
	return false;
}

static void print_table(struct rows *rows, const struct cache_row *c)
{
	for (size_t i = 0; i < rows->n; i++)
		if (rows->v[i].paused[0]) /* the state a user wants to see */
			snprintf(rows->v[i].state, sizeof(rows->v[i].state), "paused");
	bool held = show_held(rows, c);
	int wn = width(rows, 0, "NAME", 40);
	int ws = width(rows, offsetof(struct row, state), "STATE", 10);
	int wb = width(rows, offsetof(struct row, bytes), "BYTES", 20);
	int wh = held ? width(rows, offsetof(struct row, held), "HELD", 20) : 0;
	int wz = width(rows, offsetof(struct row, size), "SIZE", 20);
	int wo = width(rows, offsetof(struct row, source), "SOURCE", 40);
	printf("%-*s  %-*s  %*s  ", wn, "NAME", ws, "STATE", wb, "BYTES");
	if (held)
		printf("%*s  ", wh, "HELD");
	printf("%*s  %-*s  %s\n", wz, "SIZE", wo, "SOURCE", "ERROR");
	for (size_t i = 0; i < rows->n; i++) {
		const struct row *r = &rows->v[i];
		char err[1100] = "";
		if (r->error[0])
			snprintf(err, sizeof(err), "%s%s%s", r->error,
				 r->error_offset[0] ? " (at byte " : "",
				 r->error_offset[0] ? r->error_offset : "");
		if (r->error[0] && r->error_offset[0])
			strncat(err, ")", sizeof(err) - strlen(err) - 1);
		if (!err[0] && r->paused[0])
			snprintf(err, sizeof(err), "(%s)", r->paused);
		printf("%-*.*s  %-*s  %*s  ", wn, wn, r->name, ws, r->state, wb, r->bytes);
		if (held)
			printf("%*s  ", wh, r->held);
		printf("%*s  %-*.*s  %s\n", wz, r->size[0] ? r->size : "-", wo, wo, r->source, err);
	}
	if (c->size[0] && c->used[0])
		printf("cache: %s of %s bytes used, %s evictions\n", c->used, c->size,
		       c->evictions[0] ? c->evictions : "0");
}

static void free_rows(struct rows *rows)
{
	for (size_t i = 0; i < rows->n; i++)
		free(rows->v[i].name);
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
		int r = walk(mnt, "", &rows);
		if (r < 0) {
			fprintf(stderr, "streamfs: cannot list '%s': %s\n", mnt, strerror(-r));
			free_rows(&rows);
			return 1;
		}
		if (rows.n)
			qsort(rows.v, rows.n, sizeof(*rows.v), cmp_rows);
		if (watch && !json && isatty(STDOUT_FILENO))
			fputs("\033[H\033[2J", stdout);
		struct cache_row cr;
		memset(&cr, 0, sizeof(cr));
		get_cache(mnt, &cr);
		if (json)
			print_json(mnt, &rows, &cr);
		else
			print_table(&rows, &cr);
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
