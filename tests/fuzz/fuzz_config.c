/*
 * fuzz_config.c - libFuzzer target for the configuration parser (config.h).
 *
 * Each input is used four ways:
 * - as one string: config_validate_name(), config_parse_file() and, split
 *   at its first '=', config_set_file_option();
 * - split on NUL and newline bytes into an argv for config_parse_args();
 * - if it starts with '[', as a manifest file (a memfd reached through
 *   /proc/self/fd/N) for config_load_manifest().
 * Besides the sanitizers, it checks the contracts: every failure leaves one
 * non-empty line in err without the "streamfs:" prefix, a failed option
 * leaves its struct unchanged, and whatever is accepted is consistent.
 *
 * Arguments naming /dev, /proc, /sys or /run are dropped from the argv, so
 * "-c /dev/tty" and the like cannot block the fuzzer; run it with stdin
 * from /dev/null.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond); \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void check_err(const char *err)
{
	REQUIRE(err[0] != '\0');
	REQUIRE(!strchr(err, '\n'));
	REQUIRE(strncmp(err, "streamfs:", 9) != 0);
}

static void check_spec(const struct file_spec *f)
{
	char err[512];

	REQUIRE(config_validate_name(f->name, err, sizeof(err)) == 0);
	REQUIRE(f->source);
	REQUIRE((f->kind == SOURCE_STDIN) == !f->arg);
	REQUIRE(f->kind != SOURCE_STDIN || !strcmp(f->source, "-"));
	REQUIRE(!f->opts.headers.len || !f->opts.headers.ptr[f->opts.headers.len]);
}

static void check_config(const struct config *cfg)
{
	size_t i, j, nstdin = 0;

	REQUIRE(!cfg->fuse_opts.len || !cfg->fuse_opts.ptr[cfg->fuse_opts.len]);
	if (cfg->show_help || cfg->show_version)
		return;
	REQUIRE(cfg->mountpoint && cfg->mountpoint[0]);
	REQUIRE(!(cfg->memory_store && cfg->cache_dir));
	for (i = 0; i < cfg->files.len; i++) {
		check_spec(&cfg->files.ptr[i]);
		nstdin += cfg->files.ptr[i].kind == SOURCE_STDIN;
		for (j = 0; j < i; j++)
			REQUIRE(strcmp(cfg->files.ptr[i].name, cfg->files.ptr[j].name) != 0);
	}
	REQUIRE(nstdin <= 1);
}

static void fuzz_string(const char *s)
{
	struct file_opts o, before, copy;
	struct file_spec f;
	char err[512], *key, *eq;
	int rc;

	err[0] = '\0';
	if (config_validate_name(s, err, sizeof(err)))
		check_err(err);

	err[0] = '\0';
	if (config_parse_file(s, NULL, &f, err, sizeof(err))) {
		check_err(err);
	} else {
		check_spec(&f);
		REQUIRE(!strcmp(f.source, strchr(s, '=') + 1));
		config_file_spec_free(&f);
	}

	key = strdup(s);
	if (!key)
		return;
	eq = strchr(key, '=');
	if (eq)
		*eq = '\0';
	config_file_opts_default(&o);
	config_set_file_option(&o, "header", "X-Fuzz: 1", err, sizeof(err));
	before = o;
	err[0] = '\0';
	rc = config_set_file_option(&o, key, eq ? eq + 1 : NULL, err, sizeof(err));
	if (rc) {
		check_err(err);
		REQUIRE(!memcmp(&before, &o, sizeof(o)));
	}
	REQUIRE(config_file_opts_copy(&copy, &o) == 0);
	REQUIRE(copy.headers.len == o.headers.len && copy.size_bytes == o.size_bytes);
	config_file_opts_free(&copy);
	config_file_opts_free(&o);
	free(key);
}

static bool risky(const char *arg)
{
	return strstr(arg, "dev") || strstr(arg, "proc") || strstr(arg, "sys") ||
	       strstr(arg, "run");
}

static void fuzz_argv(const char *buf, size_t size)
{
	char *argv[MAX_ARGS + 1];
	struct config cfg;
	char err[512];
	const char *p = buf, *end = buf + size;
	int argc = 0, i;

	argv[argc++] = strdup("streamfs");
	while (p <= end && argc < MAX_ARGS) {
		size_t n = strcspn(p, "\n");
		char *arg = strndup(p, n);

		if (arg && !risky(arg))
			argv[argc++] = arg;
		else
			free(arg);
		p += n + 1;
	}
	argv[argc] = NULL;
	err[0] = '\0';
	if (config_parse_args(&cfg, argc, argv, err, sizeof(err)))
		check_err(err);
	else
		check_config(&cfg);
	config_free(&cfg);
	for (i = 0; i < argc; i++)
		free(argv[i]);
}

static void fuzz_manifest(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	struct config cfg = {0};
	char err[512];
	char *argv[] = {(char *)"streamfs", (char *)"-c", path, (char *)"mnt", NULL};

	if (fd < 0) {
		fd = memfd_create("fuzz_config.ini", MFD_CLOEXEC);
		REQUIRE(fd >= 0);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	REQUIRE(ftruncate(fd, 0) == 0);
	REQUIRE(pwrite(fd, data, size, 0) == (ssize_t)size);

	err[0] = '\0';
	if (config_load_manifest(&cfg, path, err, sizeof(err))) {
		check_err(err);
		REQUIRE(cfg.files.len == 0);
	} else {
		cfg.mountpoint = strdup("mnt");
		check_config(&cfg);
	}
	config_free(&cfg);

	err[0] = '\0';
	if (config_parse_args(&cfg, 4, argv, err, sizeof(err)))
		check_err(err);
	else
		check_config(&cfg);
	config_free(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* NUL-terminated copy; a NUL inside splits argv like a newline. */
	char *buf = malloc(size + 1);
	size_t i;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	fuzz_string(buf);
	for (i = 0; i < size; i++) {
		if (buf[i] == '\0')
			buf[i] = '\n';
	}
	fuzz_argv(buf, size);
	free(buf);
	if (size && data[0] == '[')
		fuzz_manifest(data, size);
	return 0;
}
