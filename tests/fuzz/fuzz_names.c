/*
 * fuzz_names.c - libFuzzer target for file names, from the command line to
 * the mounted tree.
 *
 * The input is split at newlines into up to MAX_NAMES names. Three things
 * must agree, or the target aborts:
 *  1. config_validate_name() and the rules of config.h, written out
 *     again here: a relative path of non-empty components separated by
 *     '/', none "." or "..", no control bytes, at most 4095 bytes in all
 *     and 255 per component.
 *  2. config_parse_args() on "streamfs MNT NAME=cmd:true ...": it accepts
 *     the set exactly when every name is valid, no name repeats, and no
 *     name is the directory of another ("a" and "a/b").
 *  3. The tree the daemon builds (fs_add_file(), before mounting): it
 *     takes every name of an accepted set, and refuses one of a set that
 *     config refused for a clash.
 * Names starting with '-' (options) or containing '=' (the separator) are
 * left out of the argv.
 */
#include "config.h"
#include "fs.h"
#include "streamfs/stream.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMES 24

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond, ...)                                                                         \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The rules, as documented. */
static bool name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 4095 || s[0] == '/')
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	const char *part = s;
	for (;;) {
		const char *slash = strchr(part, '/');
		size_t len = slash ? (size_t)(slash - part) : strlen(part);
		if (len == 0 || len > 255)
			return false;
		if ((len == 1 && part[0] == '.') || (len == 2 && part[0] == '.' && part[1] == '.'))
			return false;
		if (!slash)
			return true;
		part = slash + 1;
	}
}

/* Is @dir a directory that @path needs ("a" for "a/b/c")? */
static bool is_dir_of(const char *dir, const char *path)
{
	size_t n = strlen(dir);
	return strncmp(dir, path, n) == 0 && path[n] == '/';
}

static const struct stream_source_ops null_ops = {.kind = "fake"};

/* Add @names to a fresh tree in order; returns how many were taken before
 * the first refusal (all of them if none). */
static size_t build_tree(char **names, size_t n)
{
	struct fs *fs = fs_new();
	struct file_opts o;
	char err[512];
	size_t i;

	REQUIRE(fs, "fs_new failed");
	config_file_opts_default(&o);
	for (i = 0; i < n; i++) {
		struct stream *s = stream_new(names[i], NULL, &null_ops, NULL);
		REQUIRE(s, "stream_new failed");
		err[0] = '\0';
		if (fs_add_file(fs, names[i], s, &o, "cmd:true", err, sizeof(err)) != 0) {
			REQUIRE(err[0] && !strchr(err, '\n'),
			        "fs_add_file failed without one line");
			break;
		}
	}
	config_file_opts_free(&o);
	fs_free(fs);
	return i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *names[MAX_NAMES], *argv[MAX_NAMES + 3];
	size_t n = 0;
	char err[512];

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	for (char *p = buf, *nl; n < MAX_NAMES; p = nl + 1) {
		nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		if (p[0] != '-' && !strchr(p, '='))
			names[n++] = p;
		if (!nl)
			break;
	}

	/* 1. one name at a time */
	bool all_ok = true;
	for (size_t i = 0; i < n; i++) {
		err[0] = '\0';
		bool ok = config_validate_name(names[i], err, sizeof(err)) == 0;
		REQUIRE(ok == name_ok(names[i]), "'%s': validate says %d, the rules %d", names[i],
		        ok, name_ok(names[i]));
		REQUIRE(ok || (err[0] && !strchr(err, '\n')), "no one-line message");
		all_ok = all_ok && ok;
	}

	/* 2. the set, through the command line */
	bool clash = false;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++)
			if (i != j && (is_dir_of(names[i], names[j]) ||
			               (i < j && strcmp(names[i], names[j]) == 0)))
				clash = true;
	int argc = 0;
	argv[argc++] = "streamfs";
	argv[argc++] = "mnt";
	for (size_t i = 0; i < n; i++) {
		if (asprintf(&argv[argc], "%s=cmd:true", names[i]) < 0)
			abort();
		argc++;
	}
	argv[argc] = NULL;
	struct config cfg;
	err[0] = '\0';
	bool accepted = config_parse_args(&cfg, argc, argv, err, sizeof(err)) == 0;
	REQUIRE(accepted == (all_ok && !clash), "config %s the set (valid %d, clash %d): %s",
	        accepted ? "accepted" : "refused", all_ok, clash, err);
	if (accepted)
		REQUIRE(cfg.files.len == n, "%zu files from %zu names", cfg.files.len, n);
	config_free(&cfg);
	for (int i = 2; i < argc; i++)
		free(argv[i]);

	/* 3. the tree */
	if (all_ok) {
		size_t taken = build_tree(names, n);
		REQUIRE(clash ? taken < n : taken == n, "the tree took %zu of %zu names (clash %d)",
		        taken, n, clash);
	}
	free(buf);
	return 0;
}
