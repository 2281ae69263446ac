/*
 * test_config.c - unit tests for config.h: the command line, NAME=SOURCE
 * arguments, per-file options and manifests.
 *
 * Every failure is also checked for the message contract: one line, not
 * empty, no "streamfs:" prefix (the caller adds it). Manifests are written
 * to a mkdtemp() directory that is removed at the end.
 */
#include "config.h"
#include "harness.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The error contract, plus: @err contains @want. */
#define CHECK_ERR(err, want)                                                                       \
	do {                                                                                       \
		CHECK(err_ok(err));                                                                \
		CHECK_MSG(strstr((err), (want)), "error '%s' lacks '%s'", (err), (want));          \
	} while (0)

static bool err_ok(const char *err)
{
	return err[0] && !strchr(err, '\n') && strncmp(err, "streamfs:", 9) != 0;
}

static char tmpdir[] = "/tmp/test_config.XXXXXX";
static char *tmpfiles[64];
static int ntmpfiles;

/* Write @text (@len bytes, or strlen) to tmpdir/@name; returns the path. */
static const char *write_file_len(const char *name, const char *text, size_t len)
{
	char *path;
	FILE *f;

	if (asprintf(&path, "%s/%s", tmpdir, name) < 0)
		abort();
	f = fopen(path, "w");
	if (!f || fwrite(text, 1, len, f) != len || fclose(f)) {
		perror(path);
		abort();
	}
	for (int i = 0; i < ntmpfiles; i++) {
		if (!strcmp(tmpfiles[i], path)) {
			free(path);
			return tmpfiles[i];
		}
	}
	if (ntmpfiles == (int)(sizeof(tmpfiles) / sizeof(tmpfiles[0])))
		abort();
	tmpfiles[ntmpfiles++] = path;
	return path;
}

static const char *write_file(const char *name, const char *text)
{
	return write_file_len(name, text, strlen(text));
}

/* config_parse_args() on "streamfs" and the NULL-terminated arguments. */
static int run_args(struct config *cfg, char *err, size_t errlen, const char *const *args)
{
	char *argv[64];
	char *copy[64];
	int argc = 0, i, rc;

	argv[argc] = copy[argc] = strdup("streamfs");
	argc++;
	for (; *args; args++, argc++)
		argv[argc] = copy[argc] = strdup(*args);
	argv[argc] = NULL;
	err[0] = '\0';
	rc = config_parse_args(cfg, argc, argv, err, errlen);
	/* getopt worked on a copy: the caller's argv keeps its order. */
	for (i = 0; i < argc; i++)
		CHECK(argv[i] == copy[i]);
	for (i = 0; i < argc; i++)
		free(copy[i]);
	return rc;
}

#define PARSE(cfg, err, ...)                                                                       \
	run_args((cfg), (err), sizeof(err), (const char *const[]){__VA_ARGS__, NULL})

/* Parse a command line that must fail with a message containing @want. */
#define PARSE_FAILS(want, ...)                                                                     \
	do {                                                                                       \
		struct config c_;                                                                  \
		char e_[512];                                                                      \
		CHECK(PARSE(&c_, e_, __VA_ARGS__) == -1);                                          \
		CHECK_ERR(e_, want);                                                               \
		config_free(&c_);                                                                  \
	} while (0)

static void test_defaults(void)
{
	struct file_opts o;

	config_file_opts_default(&o);
	CHECK(o.size == SIZE_AUTO && o.size_bytes == 0);
	CHECK(o.start == START_ACCESS && o.read == READ_FULL);
	CHECK(!o.headers.ptr && o.headers.len == 0 && !o.userpwd);
	CHECK(!o.insecure && !o.location_trusted);
	CHECK(o.retries == 5 && o.retry_time == 60 && o.stall_timeout == 30);
	CHECK(o.connect_timeout == 15 && o.max_redirs == 10);
	config_file_opts_free(&o);

	CHECK(!strcmp(config_source_kind_name(SOURCE_CMD), "cmd"));
	CHECK(!strcmp(config_source_kind_name(SOURCE_PIPE), "pipe"));
	CHECK(!strcmp(config_source_kind_name(SOURCE_STDIN), "stdin"));
	CHECK(!strcmp(config_source_kind_name(SOURCE_URL), "url"));
}

static int set(struct file_opts *o, const char *key, const char *value, char *err)
{
	err[0] = '\0';
	return config_set_file_option(o, key, value, err, 512);
}

/* A bad value fails with @want in the message and leaves @o unchanged. */
#define SET_FAILS(key, value, want)                                                                \
	do {                                                                                       \
		struct file_opts b_ = o;                                                           \
		CHECK(set(&o, (key), (value), err) == -1);                                         \
		CHECK_ERR(err, want);                                                              \
		CHECK(!memcmp(&b_, &o, sizeof(o)));                                                \
	} while (0)

static void test_sizes(void)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
	    {"0", 0},
	    {"1", 1},
	    {"1048576", 1048576},
	    {"100B", 100},
	    {"1K", 1024},
	    {"1k", 1024},
	    {"1KiB", 1024},
	    {"1KB", 1024},
	    {"2M", 2u << 20},
	    {"2MiB", 2u << 20},
	    {"3G", 3ull << 30},
	    {"3gb", 3ull << 30},
	    {"5T", 5ull << 40},
	    {"8388607T", 8388607ull << 40},
	    {"9223372036854775807", 9223372036854775807ull},
	};
	static const char *const bad[] = {"",   "abc", "-1",    "+1", " 1",  "1 ",   "1.5K",
	                                  "1X", "1Ki", "1KiBx", "K",  "1iB", "0x10", "1P"};
	static const char *const big[] = {"9223372036854775808", "99999999999999999999999",
	                                  "8388608T", "9007199254740992K"};
	struct file_opts o;
	char err[512];
	size_t i;

	config_file_opts_default(&o);
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		CHECK(set(&o, "size", good[i].s, err) == 0);
		CHECK(o.size == SIZE_FIXED && o.size_bytes == good[i].v);
	}
	CHECK(set(&o, "size", "auto", err) == 0 && o.size == SIZE_AUTO);
	CHECK(set(&o, "size", "wait", err) == 0 && o.size == SIZE_WAIT);
	CHECK(set(&o, "size", "1K", err) == 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		SET_FAILS("size", bad[i], "expected auto, wait or a byte count");
	for (i = 0; i < sizeof(big) / sizeof(big[0]); i++)
		SET_FAILS("size", big[i], "too large");
	SET_FAILS("size", "abc", "bad --size value 'abc'");
	SET_FAILS("size", NULL, "--size needs a value");
	CHECK(o.size == SIZE_FIXED && o.size_bytes == 1024);
	config_file_opts_free(&o);
}

static void test_options(void)
{
	struct file_opts o, c;
	char err[512];

	config_file_opts_default(&o);

	CHECK(set(&o, "start", "mount", err) == 0 && o.start == START_MOUNT);
	CHECK(set(&o, "start", "access", err) == 0 && o.start == START_ACCESS);
	SET_FAILS("start", "never", "bad --start value 'never': expected access or mount");
	CHECK(set(&o, "read", "partial", err) == 0 && o.read == READ_PARTIAL);
	CHECK(set(&o, "read", "full", err) == 0 && o.read == READ_FULL);
	SET_FAILS("read", "some", "bad --read value 'some'");

	CHECK(set(&o, "header", "X-A: b", err) == 0);
	CHECK(set(&o, "header", "Accept:", err) == 0);
	CHECK(set(&o, "header", "X-Empty;", err) == 0);
	CHECK(o.headers.len == 3 && !strcmp(o.headers.ptr[0], "X-A: b") && !o.headers.ptr[3]);
	SET_FAILS("header", "NoColon", "bad --header value 'NoColon': expected 'Name: value'");
	SET_FAILS("header", ": v", "bad --header");
	SET_FAILS("header", "Bad Name: x", "bad --header");
	SET_FAILS("header", "X;y", "bad --header");
	SET_FAILS("header", "X-A: b\r\nEvil: 1", "bad --header value 'X-A: b\\x0d\\nEvil: 1'");
	SET_FAILS("header", "", "bad --header");

	CHECK(set(&o, "insecure", NULL, err) == 0 && o.insecure);
	CHECK(set(&o, "insecure", "false", err) == 0 && !o.insecure);
	CHECK(set(&o, "insecure", "YES", err) == 0 && o.insecure);
	CHECK(set(&o, "insecure", "0", err) == 0 && !o.insecure);
	SET_FAILS("insecure", "maybe", "bad --insecure value 'maybe': expected true or false");
	CHECK(set(&o, "location-trusted", NULL, err) == 0 && o.location_trusted);
	CHECK(set(&o, "location-trusted", "off", err) == 0 && !o.location_trusted);
	SET_FAILS("location-trusted", "", "bad --location-trusted value");

	CHECK(set(&o, "retries", "0", err) == 0 && o.retries == 0);
	CHECK(set(&o, "retries", "7", err) == 0 && o.retries == 7);
	SET_FAILS("retries", "-1", "bad --retries value '-1'");
	SET_FAILS("retries", "x", "bad --retries value");
	SET_FAILS("retries", "99999999999", "bad --retries value");
	SET_FAILS("retries", "", "bad --retries value");
	SET_FAILS("retries", NULL, "--retries needs a value");
	CHECK(set(&o, "max-redirs", "3", err) == 0 && o.max_redirs == 3);
	SET_FAILS("max-redirs", "1.5", "bad --max-redirs value");

	CHECK(set(&o, "retry-time", "2.5", err) == 0 && o.retry_time == 2.5);
	CHECK(set(&o, "retry-time", ".5", err) == 0 && o.retry_time == 0.5);
	CHECK(set(&o, "stall-timeout", "10", err) == 0 && o.stall_timeout == 10);
	CHECK(set(&o, "connect-timeout", "0", err) == 0 && o.connect_timeout == 0);
	SET_FAILS("retry-time", "-1", "bad --retry-time value '-1': expected seconds");
	SET_FAILS("retry-time", "abc", "bad --retry-time value");
	SET_FAILS("stall-timeout", "inf", "bad --stall-timeout value");
	SET_FAILS("stall-timeout", "nan", "bad --stall-timeout value");
	SET_FAILS("connect-timeout", "2000000000", "bad --connect-timeout value");
	SET_FAILS("connect-timeout", ".", "bad --connect-timeout value");
	SET_FAILS("connect-timeout", "1s", "bad --connect-timeout value");

	CHECK(set(&o, "user", "alice:secret", err) == 0 && !strcmp(o.userpwd, "alice:secret"));
	CHECK(set(&o, "user", "bob:", err) == 0 && !strcmp(o.userpwd, "bob:"));
	SET_FAILS("user", "nocolon", "bad --user value (not shown): expected USER:PASSWORD");
	SET_FAILS("user", ":pw", "expected USER:PASSWORD");
	CHECK(set(&o, "user", "x:hunter2", err) == 0);
	CHECK(set(&o, "user", "hunter2", err) == -1 && !strstr(err, "hunter2"));

	/* Manifest spellings: any case, '_' for '-'. */
	CHECK(set(&o, "Retry_Time", "3", err) == 0 && o.retry_time == 3);
	CHECK(set(&o, "MAX_REDIRS", "4", err) == 0 && o.max_redirs == 4);
	SET_FAILS("sise", "1", "unknown option 'sise'");
	SET_FAILS("source", "cmd:ls", "unknown option 'source'");
	SET_FAILS("", "1", "unknown option ''");

	/* A deep copy. */
	CHECK(config_file_opts_copy(&c, &o) == 0);
	CHECK(c.headers.len == 3 && c.headers.ptr != o.headers.ptr &&
	      c.headers.ptr[0] != o.headers.ptr[0]);
	CHECK(!strcmp(c.headers.ptr[2], "X-Empty;") && !c.headers.ptr[3]);
	CHECK(c.userpwd != o.userpwd && !strcmp(c.userpwd, "x:hunter2"));
	CHECK(c.max_redirs == 4 && c.retry_time == 3);
	config_file_opts_free(&o);
	CHECK(!o.headers.ptr && !o.headers.len && !o.userpwd);
	config_file_opts_free(&c);
	config_file_opts_free(NULL);
}

static void test_names(void)
{
	static const char *const good[] = {
	    "a",    "a.bin", "dir/a.bin",       "a/b/c", "...", ".hidden",
	    "a..b", "a b",   "caf\xc3\xa9.mp4", "-x",    "a=b"};
	static const struct {
		const char *name, *want;
	} bad[] = {
	    {"", "empty name"},
	    {"/a", "no leading '/'"},
	    {"a/", "trailing '/'"},
	    {"a//b", "empty path component"},
	    {".", "'.' is not allowed"},
	    {"..", "'..' is not allowed"},
	    {"a/../b", "'..' is not allowed"},
	    {"a/./b", "'.' is not allowed"},
	    {"./a", "'.' is not allowed"},
	    {"a/..", "'..' is not allowed"},
	    {"a\nb", "control characters"},
	    {"a\x7f", "control characters"},
	    {"//", "no leading '/'"},
	};
	char err[512], part[300], *full;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(config_validate_name(good[i], err, sizeof(err)) == 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(config_validate_name(bad[i].name, err, sizeof(err)) == -1);
		CHECK_ERR(err, bad[i].want);
	}
	CHECK(config_validate_name(NULL, err, sizeof(err)) == -1);
	CHECK(config_validate_name("a\nb", err, sizeof(err)) == -1 && strstr(err, "a\\nb"));

	memset(part, 'x', 255);
	part[255] = '\0';
	CHECK(config_validate_name(part, err, sizeof(err)) == 0);
	part[255] = 'x';
	part[256] = '\0';
	CHECK(config_validate_name(part, err, sizeof(err)) == -1);
	CHECK_ERR(err, "longer than 255 bytes");

	/* 4095 bytes in all is the limit: 15 * 256 + 255. */
	full = malloc(4097);
	memset(full, 'y', 4096);
	for (i = 255; i < 4096; i += 256)
		full[i] = '/';
	full[4095] = '\0';
	CHECK(config_validate_name(full, err, sizeof(err)) == 0);
	full[4095] = 'y';
	full[4096] = '\0';
	CHECK(config_validate_name(full, err, sizeof(err)) == -1);
	CHECK_ERR(err, "longer than 4095 bytes");
	/* The message stays short whatever the name. */
	CHECK(strlen(err) < 200);
	free(full);
	/* A NUL cannot be part of a name: the C string ends there. */
	CHECK(config_validate_name("a\0/..", err, sizeof(err)) == 0);
	/* Tiny or absent buffers are fine. */
	CHECK(config_validate_name("", err, 1) == -1 && err[0] == '\0');
	CHECK(config_validate_name("", NULL, 0) == -1);
}

static int pf(const char *arg, const struct file_opts *def, struct file_spec *f, char *err)
{
	err[0] = '\0';
	return config_parse_file(arg, def, f, err, 512);
}

static bool is_zero(const struct file_spec *f)
{
	static const struct file_spec zero;

	return !memcmp(f, &zero, sizeof(zero));
}

#define FILE_FAILS(arg, want)                                                                      \
	do {                                                                                       \
		struct file_spec f_;                                                               \
		CHECK(pf((arg), NULL, &f_, err) == -1);                                            \
		CHECK_ERR(err, want);                                                              \
		CHECK(is_zero(&f_));                                                               \
	} while (0)

static void test_parse_file(void)
{
	static const char *const urls[] = {"http://example.com/v.mp4",
	                                   "https://example.com/a?b=c&d=e#f",
	                                   "ftp://ftp.example.com/pub/x.iso",
	                                   "ftps://u:p@example.com:990/x",
	                                   "HTTPS://Example.COM/x",
	                                   "http://[::1]:8080/x",
	                                   "http://127.0.0.1",
	                                   "https://user@host/"};
	struct file_opts def;
	struct file_spec f;
	char err[512], arg[256];
	size_t i;

	CHECK(pf("log.txt=cmd:journalctl -o short", NULL, &f, err) == 0);
	CHECK(!strcmp(f.name, "log.txt") && f.kind == SOURCE_CMD);
	CHECK(!strcmp(f.source, "cmd:journalctl -o short") &&
	      !strcmp(f.arg, "journalctl -o short"));
	CHECK(f.opts.size == SIZE_AUTO && f.opts.retries == 5);
	config_file_spec_free(&f);
	CHECK(is_zero(&f));

	/* Split at the first '=': the command may hold more. */
	CHECK(pf("d/e.txt=cmd:env A=1 B=2 sh -c 'echo $A'", NULL, &f, err) == 0);
	CHECK(!strcmp(f.name, "d/e.txt") && !strcmp(f.arg, "env A=1 B=2 sh -c 'echo $A'"));
	config_file_spec_free(&f);

	CHECK(pf("p=pipe:/tmp/fifo", NULL, &f, err) == 0);
	CHECK(f.kind == SOURCE_PIPE && !strcmp(f.arg, "/tmp/fifo"));
	config_file_spec_free(&f);
	/* Existence of the pipe is not checked here. */
	CHECK(pf("p=pipe:relative/does-not-exist", NULL, &f, err) == 0);
	config_file_spec_free(&f);

	CHECK(pf("data.bin=-", NULL, &f, err) == 0);
	CHECK(f.kind == SOURCE_STDIN && !f.arg && !strcmp(f.source, "-"));
	config_file_spec_free(&f);

	for (i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
		snprintf(arg, sizeof(arg), "u.bin=%s", urls[i]);
		CHECK(pf(arg, NULL, &f, err) == 0);
		CHECK(f.kind == SOURCE_URL && !strcmp(f.arg, urls[i]) &&
		      !strcmp(f.source, urls[i]));
		config_file_spec_free(&f);
	}

	/* Options come from @defaults, deep-copied. */
	config_file_opts_default(&def);
	CHECK(set(&def, "header", "X-A: 1", err) == 0 && set(&def, "size", "2K", err) == 0);
	CHECK(pf("v=https://h/x", &def, &f, err) == 0);
	CHECK(f.opts.size == SIZE_FIXED && f.opts.size_bytes == 2048);
	CHECK(f.opts.headers.len == 1 && f.opts.headers.ptr != def.headers.ptr);
	config_file_spec_free(&f);
	config_file_opts_free(&def);

	FILE_FAILS("noequals", "missing '=' in 'noequals': expected NAME=SOURCE");
	FILE_FAILS("=cmd:ls", "empty name in '=cmd:ls'");
	FILE_FAILS("x=", "empty source for 'x'");
	FILE_FAILS("x=cmd:", "empty command in 'cmd:' for 'x'");
	FILE_FAILS("x=cmd: \t ", "empty command");
	FILE_FAILS("x=pipe:", "empty path in 'pipe:' for 'x'");
	FILE_FAILS("x.bin=foo:bar", "unknown source 'foo:bar' for 'x.bin': expected cmd:COMMAND, "
	                            "pipe:PATH, -, an http(s)/ftp(s) URL, or s3://BUCKET/KEY");
	FILE_FAILS("x=gopher://h/", "unknown source 'gopher://h/'");
	FILE_FAILS("x=file:///etc/passwd", "unknown source");
	FILE_FAILS("x=CMD:ls", "unknown source");
	FILE_FAILS("x=--", "unknown source");
	FILE_FAILS("x=/tmp/file", "unknown source");
	FILE_FAILS("x=http://", "bad URL 'http://' for 'x': no host");
	FILE_FAILS("x=http:///path", "no host");
	FILE_FAILS("x=https://user@/p", "no host");
	FILE_FAILS("x=https://:80/", "no host");
	FILE_FAILS("x=http:/host/x", "bad URL 'http:/host/x' for 'x': expected http://HOST/");
	FILE_FAILS("x=http:host", "bad URL");
	FILE_FAILS("x=http://host:99999/", "bad URL 'http://host:99999/'");
	FILE_FAILS("x=http://a b/", "bad URL");
	FILE_FAILS("../x=cmd:ls", "bad name '../x'");
	FILE_FAILS("a//b=cmd:ls", "empty path component");
	FILE_FAILS("a\nb=cmd:ls", "bad name 'a\\nb'");
	FILE_FAILS("x=foo\nbar", "unknown source 'foo\\nbar'");
	CHECK(config_parse_file(NULL, NULL, &f, err, sizeof(err)) == -1 && is_zero(&f));
}

static void test_args(void)
{
	struct config cfg;
	char err[512];
	size_t i;

	CHECK(PARSE(&cfg, err, "mnt") == 0);
	CHECK(!strcmp(cfg.mountpoint, "mnt") && cfg.files.len == 0 && !cfg.manifest);
	CHECK(!cfg.fuse_opts.ptr && cfg.fuse_opts.len == 0);
	CHECK(!cfg.foreground && cfg.verbosity == 0 && !cfg.cache_dir && !cfg.memory_store);
	CHECK(!cfg.show_help && !cfg.show_version);
	config_free(&cfg);
	CHECK(!cfg.mountpoint && !cfg.files.ptr);
	config_free(&cfg);
	config_free(NULL);

	/* Per-file options apply to every file on the command line, before or after it. */
	CHECK(PARSE(&cfg, err, "-f", "-v", "-v", "-o", "allow_other", "-o", "ro,noatime",
	            "--cache-dir", "/var/cache/x", "--size=1M", "--header", "A: b", "mnt",
	            "a=cmd:ls -l", "d/b.bin=https://h/x", "--insecure", "c=-", "--retries=2",
	            "e=pipe:/p") == 0);
	CHECK(!strcmp(cfg.mountpoint, "mnt") && cfg.foreground && cfg.verbosity == 2);
	CHECK(cfg.fuse_opts.len == 3 && !strcmp(cfg.fuse_opts.ptr[0], "allow_other"));
	CHECK(!strcmp(cfg.fuse_opts.ptr[1], "ro") && !strcmp(cfg.fuse_opts.ptr[2], "noatime"));
	CHECK(!cfg.fuse_opts.ptr[3]);
	CHECK(!strcmp(cfg.cache_dir, "/var/cache/x") && !cfg.memory_store);
	CHECK(cfg.files.len == 4);
	for (i = 0; i < cfg.files.len; i++) {
		CHECK(cfg.files.ptr[i].opts.size == SIZE_FIXED);
		CHECK(cfg.files.ptr[i].opts.size_bytes == 1 << 20);
		CHECK(cfg.files.ptr[i].opts.insecure && cfg.files.ptr[i].opts.retries == 2);
		CHECK(cfg.files.ptr[i].opts.headers.len == 1);
	}
	CHECK(!strcmp(cfg.files.ptr[0].name, "a") && cfg.files.ptr[0].kind == SOURCE_CMD);
	CHECK(!strcmp(cfg.files.ptr[1].name, "d/b.bin") && cfg.files.ptr[1].kind == SOURCE_URL);
	CHECK(!strcmp(cfg.files.ptr[2].name, "c") && cfg.files.ptr[2].kind == SOURCE_STDIN);
	CHECK(!strcmp(cfg.files.ptr[3].name, "e") && cfg.files.ptr[3].kind == SOURCE_PIPE);
	config_free(&cfg);

	CHECK(PARSE(&cfg, err, "--foreground", "--verbose", "-vv", "--quiet", "mnt") == 0);
	CHECK(cfg.foreground && cfg.verbosity == -1);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "-q", "-v", "mnt") == 0 && cfg.verbosity == 1);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "-fvq", "mnt") == 0 && cfg.foreground && cfg.verbosity == -1);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--cache-dir=memory", "mnt") == 0);
	CHECK(cfg.memory_store && !cfg.cache_dir);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--cache-dir=memory", "--cache-dir=/c", "mnt") == 0);
	CHECK(!cfg.memory_store && !strcmp(cfg.cache_dir, "/c"));
	config_free(&cfg);
	/* Long options may be abbreviated when unambiguous. */
	CHECK(PARSE(&cfg, err, "--fore", "--stall=5", "mnt", "a=cmd:x") == 0);
	CHECK(cfg.foreground && cfg.files.ptr[0].opts.stall_timeout == 5);
	config_free(&cfg);
	/* After "--", everything is positional. */
	CHECK(PARSE(&cfg, err, "-f", "--", "mnt", "-x=cmd:ls", "--y=-") == 0);
	CHECK(cfg.files.len == 2 && !strcmp(cfg.files.ptr[0].name, "-x"));
	CHECK(!strcmp(cfg.files.ptr[1].name, "--y"));
	config_free(&cfg);
	/* A mountpoint that merely contains '=' is fine. */
	CHECK(PARSE(&cfg, err, "/mnt/a=b") == 0 && !strcmp(cfg.mountpoint, "/mnt/a=b"));
	config_free(&cfg);

	CHECK(PARSE(&cfg, err, "-h") == 0 && cfg.show_help);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "mnt", "--help", "junk") == 0 && cfg.show_help);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--version") == 0 && cfg.show_version);
	config_free(&cfg);

	PARSE_FAILS("missing MOUNTPOINT", "-f");
	PARSE_FAILS("missing MOUNTPOINT: 'a=cmd:ls' is a NAME=SOURCE", "a=cmd:ls");
	PARSE_FAILS("missing MOUNTPOINT", "v.mp4=https://h/v.mp4");
	PARSE_FAILS("empty MOUNTPOINT", "");
	PARSE_FAILS("'-' is not a valid MOUNTPOINT", "-");
	PARSE_FAILS("'-' alone is not a file (to read standard input, write NAME=-)", "mnt", "-");
	PARSE_FAILS("missing '=' in 'foo'", "mnt", "foo");
	PARSE_FAILS("missing '=' in 'b'", "mnt", "a=cmd:x", "b");
	PARSE_FAILS("empty name in '=cmd:x'", "mnt", "=cmd:x");
	PARSE_FAILS("bad name '/abs'", "mnt", "/abs=cmd:x");
	PARSE_FAILS("bad name 'a\\nb'", "mnt", "a\nb=cmd:x");
	PARSE_FAILS("unknown source 'foo:bar' for 'x.bin'", "mnt", "x.bin=foo:bar");
	PARSE_FAILS("duplicate name 'a'", "mnt", "a=cmd:x", "b=cmd:y", "a=cmd:z");
	PARSE_FAILS("'d' can't be both a file and the directory of 'd/f'", "mnt", "d/f=cmd:x",
	            "d=cmd:y");
	PARSE_FAILS("'a' and 'b' both read standard input", "mnt", "a=-", "b=-");
	PARSE_FAILS("unknown option '--bogus'", "--bogus", "mnt");
	PARSE_FAILS("unknown option '--bogus'", "mnt", "--bogus=1");
	PARSE_FAILS("unknown option -x", "-fx", "mnt");
	PARSE_FAILS("option '--foreground' takes no value", "--foreground=yes", "mnt");
	PARSE_FAILS("option '--size' needs a value", "mnt", "--size");
	PARSE_FAILS("option -c needs a value", "mnt", "-c");
	PARSE_FAILS("option -o needs a value", "mnt", "-o");
	PARSE_FAILS("option -o needs a value", "-o", "", "mnt");
	PARSE_FAILS("ambiguous option '--s'", "--s=1", "mnt");
	PARSE_FAILS("option --cache-dir needs a directory", "--cache-dir=", "mnt");
	PARSE_FAILS("option -c/--config needs a file name", "--config=", "mnt");
	PARSE_FAILS("option -c/--config given twice", "-c", "a.ini", "-c", "b.ini", "mnt");
	PARSE_FAILS("bad --size value 'abc'", "--size=abc", "mnt", "a=cmd:x");
	PARSE_FAILS("bad --retries value", "mnt", "a=cmd:x", "--retries=-3");
	PARSE_FAILS("bad --insecure value 'maybe'", "--insecure=maybe", "mnt");
	PARSE_FAILS("bad --user value (not shown)", "--user=secret", "mnt");
	PARSE_FAILS("no host", "mnt", "a=https://");
	PARSE_FAILS("unknown option in '-\\x01'", "-\x01", "mnt");

	/* A failure half-way through "-fx" leaves getopt mid-argument; the next parse starts
	 * afresh. */
	PARSE_FAILS("unknown option -x", "-fxv", "mnt");
	CHECK(PARSE(&cfg, err, "-v", "mnt") == 0 && cfg.verbosity == 1 && !cfg.foreground);
	config_free(&cfg);

	/* No arguments at all, not even argv[0]. */
	CHECK(config_parse_args(&cfg, 0, NULL, err, sizeof(err)) == -1);
	CHECK_ERR(err, "missing MOUNTPOINT");
	config_free(&cfg);
}

static int load(struct config *cfg, const char *path, char *err)
{
	err[0] = '\0';
	return config_load_manifest(cfg, path, err, 512);
}

/* Loading @text fails with "PATH:want" and adds nothing. */
#define MANIFEST_FAILS(text, want)                                                                 \
	do {                                                                                       \
		struct config c_ = {0};                                                            \
		char e_[512], w_[600];                                                             \
		const char *p_ = write_file("bad.ini", (text));                                    \
		CHECK(load(&c_, p_, e_) == -1);                                                    \
		snprintf(w_, sizeof(w_), "%s:%s", p_, (want));                                     \
		CHECK_ERR(e_, w_);                                                                 \
		CHECK(c_.files.len == 0 && !c_.files.ptr);                                         \
		config_free(&c_);                                                                  \
	} while (0)

static void test_manifest(void)
{
	struct config cfg = {0};
	const struct file_spec *f;
	const char *path;
	char err[512], *text, *longname, *longurl;

	/* Long section names and values: beyond inih's 50- and 200-byte defaults. */
	longname = malloc(306);
	memcpy(longname, "long/", 5);
	memset(longname + 5, 'n', 300);
	longname[100] = '/';
	longname[305] = '\0';
	longurl = malloc(2101);
	memcpy(longurl, "https://example.com/", 20);
	memset(longurl + 20, 'q', 2080);
	longurl[2100] = '\0';
	if (asprintf(&text,
	             "\xEF\xBB\xBF# streamfs manifest\n"
	             "; comment\n"
	             "\n"
	             "[video.mp4]\n"
	             "source = https://host/v.mp4\n"
	             "size = 1GiB\n"
	             "header = Authorization: Bearer x\n"
	             "header = X-B: 2\n"
	             "insecure = true\n"
	             "retries = 3\n"
	             "retry_time = 1.5\n"
	             "stall-timeout = 4\n"
	             "connect-timeout = 5\n"
	             "max-redirs = 6\n"
	             "user = u:p\n"
	             "location-trusted = yes\n"
	             "\n"
	             "[logs/today.txt] ; a comment after the header\n"
	             "  start = mount\n"
	             "\tread: partial\r\n"
	             "  source = cmd:journalctl -o short ; echo done\n"
	             "[in.bin]\n"
	             "SOURCE=-\n"
	             "[%s]\n"
	             "source = %s\n"
	             "[p]\n"
	             "source = pipe:/run/fifo\n",
	             longname, longurl) < 0)
		abort();
	path = write_file("good.ini", text);
	free(text);
	/* It holds a user and headers: it must be the owner's alone. */
	CHECK(chmod(path, 0600) == 0);
	CHECK(load(&cfg, path, err) == 0);
	if (err[0])
		fprintf(stderr, "good.ini: %s\n", err);
	CHECK(cfg.files.len == 5);
	if (cfg.files.len == 5) {
		f = &cfg.files.ptr[0];
		CHECK(!strcmp(f->name, "video.mp4") && f->kind == SOURCE_URL);
		CHECK(!strcmp(f->arg, "https://host/v.mp4"));
		CHECK(f->opts.size == SIZE_FIXED && f->opts.size_bytes == 1ull << 30);
		CHECK(f->opts.headers.len == 2 &&
		      !strcmp(f->opts.headers.ptr[0], "Authorization: Bearer x"));
		CHECK(f->opts.insecure && f->opts.retries == 3 && f->opts.retry_time == 1.5);
		CHECK(f->opts.stall_timeout == 4 && f->opts.connect_timeout == 5);
		CHECK(f->opts.max_redirs == 6 && !strcmp(f->opts.userpwd, "u:p"));
		CHECK(f->opts.location_trusted);
		f = &cfg.files.ptr[1];
		CHECK(!strcmp(f->name, "logs/today.txt") && f->kind == SOURCE_CMD);
		/* ';' is not an inline comment: it belongs to the command. */
		CHECK(!strcmp(f->arg, "journalctl -o short ; echo done"));
		CHECK(f->opts.start == START_MOUNT && f->opts.read == READ_PARTIAL);
		CHECK(f->opts.size == SIZE_AUTO && f->opts.retries == 5);
		CHECK(!strcmp(cfg.files.ptr[2].name, "in.bin") &&
		      cfg.files.ptr[2].kind == SOURCE_STDIN);
		CHECK(!strcmp(cfg.files.ptr[3].name, longname) &&
		      !strcmp(cfg.files.ptr[3].arg, longurl));
		CHECK(cfg.files.ptr[4].kind == SOURCE_PIPE &&
		      !strcmp(cfg.files.ptr[4].arg, "/run/fifo"));
	}
	/* Loading more appends; a name already there is a duplicate. */
	CHECK(load(&cfg, write_file("more.ini", "[more]\nsource=cmd:x\n"), err) == 0);
	CHECK(cfg.files.len == 6 && !strcmp(cfg.files.ptr[5].name, "more"));
	path = write_file("dup.ini", "[x]\nsource=cmd:x\n\n[video.mp4]\nsource=-\n");
	CHECK(load(&cfg, path, err) == -1);
	CHECK_ERR(err, ":4: duplicate name [video.mp4]");
	CHECK(cfg.files.len == 6);
	path = write_file("dir.ini", "[video.mp4/x]\nsource=cmd:x\n");
	CHECK(load(&cfg, path, err) == -1);
	CHECK_ERR(err, ":1: [video.mp4] can't be both a file and the directory of [video.mp4/x]");
	config_free(&cfg);
	free(longname);
	free(longurl);

	/* An empty manifest, or comments only, is fine. */
	CHECK(load(&cfg, write_file("empty.ini", ""), err) == 0 && cfg.files.len == 0);
	CHECK(load(&cfg, write_file("comments.ini", "# x\n;y\n\n"), err) == 0 && !cfg.files.len);
	/* No newline at the end. */
	CHECK(load(&cfg, write_file("nonl.ini", "[a]\nsource=cmd:x"), err) == 0);
	CHECK(cfg.files.len == 1 && !strcmp(cfg.files.ptr[0].arg, "x"));
	config_free(&cfg);

	MANIFEST_FAILS("[video.mp4]\nsource = -\n\n\n\n\nsise = 1\n",
	               "7: unknown key 'sise' in [video.mp4]");
	MANIFEST_FAILS("[a]\nsize = 1K\n[b]\nsource=cmd:x\n", "1: no 'source' key in [a]");
	MANIFEST_FAILS("[a]\nsource=cmd:x\n[b]\n[c]\nsource=cmd:y\n", "3: no 'source' key in [b]");
	MANIFEST_FAILS("[a]\nsource=cmd:x\n\n[last]\n", "4: no 'source' key in [last]");
	MANIFEST_FAILS("[a]\nsource=cmd:x\nsource=cmd:y\n", "3: key 'source' given twice in [a]");
	MANIFEST_FAILS("[a]\nsource=cmd:x\nsize=1\nSize=2\n", "4: key 'Size' given twice in [a]");
	MANIFEST_FAILS("[streamfs]\nsource=cmd:x\n", "1: section [streamfs] is reserved");
	MANIFEST_FAILS("source=cmd:x\n[a]\n", "1: key 'source' outside of any [section]");
	MANIFEST_FAILS("[a]\nsource=cmd:x\njunk\n", "3: syntax error");
	MANIFEST_FAILS("[a\nsource=cmd:x\n", "1: syntax error");
	MANIFEST_FAILS("[a] b\nsource=cmd:x\n", "1: unexpected text after ']': 'b'");
	MANIFEST_FAILS("[a/../b]\nsource=cmd:x\n", "1: bad name 'a/../b'");
	MANIFEST_FAILS("[]\nsource=cmd:x\n", "1: empty name");
	MANIFEST_FAILS("[x]\nsource=cmd:x\nsize = abc\n", "3: [x]: bad size value 'abc'");
	MANIFEST_FAILS("[x]\nsource=cmd:x\ninsecure =\n", "3: [x]: bad insecure value ''");
	MANIFEST_FAILS("[x.bin]\nsource = foo:bar\n", "2: [x.bin]: unknown source 'foo:bar'");
	MANIFEST_FAILS("[x]\nsource = http:///p\n", "2: [x]: bad URL");
	MANIFEST_FAILS("[a]\nsource=cmd:x\n[b]\nsource=-\n[a]\nsource=-\n",
	               "5: duplicate section [a] (first at line 1)");
	{
		struct config c = {0};

		path = write_file_len("nul.ini", "[a]\nsource=cmd:x\0y\n", 19);
		CHECK(load(&c, path, err) == -1);
		CHECK_ERR(err, ":2: NUL byte in line");
		config_free(&c);
	}
	text = malloc(70020);
	memcpy(text, "[a]\nsource=cmd:", 15);
	memset(text + 15, 'x', 70000);
	strcpy(text + 70015 - 5, "\n");
	MANIFEST_FAILS(text, "2: line longer than 65536 bytes");
	free(text);

	CHECK(load(&cfg, "/nonexistent/streamfs.ini", err) == -1);
	CHECK_ERR(err, "cannot read manifest '/nonexistent/streamfs.ini': No such file");
	CHECK(load(&cfg, tmpdir, err) == -1);
	CHECK_ERR(err, "Is a directory");
	CHECK(load(&cfg, "", err) == -1);
	CHECK_ERR(err, "empty manifest file name");
	if (geteuid() != 0) {
		path = write_file("noperm.ini", "[a]\nsource=-\n");
		chmod(path, 0);
		CHECK(load(&cfg, path, err) == -1);
		CHECK_ERR(err, "Permission denied");
	}
	CHECK(cfg.files.len == 0);
	config_free(&cfg);

	/* Through the command line: manifest first, command-line options not applied to it. */
	path = write_file("cli.ini", "[m/one]\nsource=cmd:x\n[m/two]\nsource=-\nsize=wait\n");
	CHECK(PARSE(&cfg, err, "--size=1K", "mnt", "c=cmd:y", "-c", path, "-o", "ro") == 0);
	CHECK(cfg.files.len == 3 && !strcmp(cfg.manifest, path));
	if (cfg.files.len == 3) {
		CHECK(!strcmp(cfg.files.ptr[0].name, "m/one") &&
		      cfg.files.ptr[0].opts.size == SIZE_AUTO);
		CHECK(!strcmp(cfg.files.ptr[1].name, "m/two") &&
		      cfg.files.ptr[1].opts.size == SIZE_WAIT);
		CHECK(!strcmp(cfg.files.ptr[2].name, "c") &&
		      cfg.files.ptr[2].opts.size == SIZE_FIXED);
	}
	config_free(&cfg);
	PARSE_FAILS("duplicate name 'm/one': in the manifest and on the command line", "-c", path,
	            "mnt", "m/one=cmd:z");
	PARSE_FAILS("'m/two' and 'x' both read standard input", "-c", path, "mnt", "x=-");
	PARSE_FAILS("'m' can't be both a file and the directory of 'm/one'", "-c", path, "mnt",
	            "m=cmd:z");
	PARSE_FAILS("cannot read manifest '/nonexistent.ini'", "-c", "/nonexistent.ini", "mnt");
	PARSE_FAILS(":2: unknown key 'bogus' in [a]", "--config",
	            write_file("unk.ini", "[a]\nbogus=1\n"), "mnt");
	/* -h wins: the manifest is not read. */
	CHECK(PARSE(&cfg, err, "-c", "/nonexistent.ini", "-h") == 0 && cfg.show_help);
	config_free(&cfg);
}

/* A file of mode @mode in tmpdir. */
static const char *write_mode(const char *name, const char *text, mode_t mode)
{
	const char *path = write_file(name, text);

	if (chmod(path, mode))
		abort();
	return path;
}

static void test_secret_files(void)
{
	struct file_opts o;
	char err[512], at[600], *cwd;
	const char *p;

	config_file_opts_default(&o);
	p = write_mode("user.txt", "alice:pw with spaces\r\n\n", 0600);
	snprintf(at, sizeof(at), "@%s", p);
	CHECK(set(&o, "user", at, err) == -1); /* only the command line and manifests read files */
	config_file_opts_free(&o);

	struct config cfg;
	CHECK(PARSE(&cfg, err, "--user", at, "mnt", "a=https://h/") == 0);
	CHECK(cfg.files.len == 1 && !strcmp(cfg.files.ptr[0].opts.userpwd, "alice:pw with spaces"));
	config_free(&cfg);

	p = write_mode("headers.txt", "Authorization: Bearer t0k\n\n  \nX-B: 2\r\n", 0400);
	snprintf(at, sizeof(at), "--header=@%s", p);
	CHECK(PARSE(&cfg, err, "--header=X-A: 1", at, "mnt", "a=https://h/") == 0);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].opts.headers.len == 3);
	if (cfg.files.len == 1 && cfg.files.ptr[0].opts.headers.len == 3) {
		CHECK(!strcmp(cfg.files.ptr[0].opts.headers.ptr[0], "X-A: 1"));
		CHECK(!strcmp(cfg.files.ptr[0].opts.headers.ptr[1], "Authorization: Bearer t0k"));
		CHECK(!strcmp(cfg.files.ptr[0].opts.headers.ptr[2], "X-B: 2"));
	}
	config_free(&cfg);

	/* Accessible by group or others: refused, as ssh refuses such keys. */
	p = write_mode("open.txt", "alice:pw\n", 0644);
	snprintf(at, sizeof(at), "--user=@%s", p);
	PARSE_FAILS("holds credentials but is accessible by group or others (mode 0644)", at,
	            "mnt");
	CHECK(chmod(p, 0640) == 0);
	PARSE_FAILS("(mode 0640): chmod go= it", at, "mnt");

	/* Bad contents: named by line, never quoted. */
	p = write_mode("two.txt", "alice:pw1\nbob:pw2\n", 0600);
	snprintf(at, sizeof(at), "--user=@%s", p);
	PARSE_FAILS("more than one line for --user", at, "mnt");
	p = write_mode("nocolon.txt", "hunter2\n", 0600);
	snprintf(at, sizeof(at), "--user=@%s", p);
	PARSE_FAILS("line 1 (not shown): expected USER:PASSWORD", at, "mnt");
	p = write_mode("badhdr.txt", "X-A: 1\n\nsecret-token\n", 0600);
	snprintf(at, sizeof(at), "--header=@%s", p);
	PARSE_FAILS("line 3 (not shown): expected 'Name: value'", at, "mnt");
	CHECK(PARSE(&cfg, err, at, "mnt") == -1 && !strstr(err, "secret-token"));
	config_free(&cfg);
	p = write_mode("empty.txt", "\n \n", 0600);
	snprintf(at, sizeof(at), "--user=@%s", p);
	PARSE_FAILS("is empty: expected USER:PASSWORD", at, "mnt");
	PARSE_FAILS("No such file or directory", "--header=@/nonexistent/h.txt", "mnt");
	PARSE_FAILS("option --user=@ needs a file name", "--user=@", "mnt");
	PARSE_FAILS("is not a regular file or a pipe", "--user=@/dev/null", "mnt");

	/* netrc: kept absolute (the daemon works from "/"), checked like the others. */
	p = write_mode("netrc", "machine h login a password p\n", 0600);
	cwd = getcwd(NULL, 0);
	CHECK(cwd && chdir(tmpdir) == 0);
	CHECK(PARSE(&cfg, err, "--netrc-file=netrc", "mnt", "a=https://h/") == 0);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].opts.netrc_file &&
	      !strcmp(cfg.files.ptr[0].opts.netrc_file, p));
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--netrc", "mnt", "a=https://h/") == 0);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].opts.netrc &&
	      !cfg.files.ptr[0].opts.netrc_file);
	config_free(&cfg);
	CHECK(chmod(p, 0604) == 0);
	PARSE_FAILS("netrc file 'netrc' holds credentials but is accessible", "--netrc-file=netrc",
	            "mnt");
	PARSE_FAILS("cannot read netrc file 'nosuch'", "--netrc-file=nosuch", "mnt");
	PARSE_FAILS("netrc file '.' is not a regular file", "--netrc-file=.", "mnt");
	CHECK(cwd && chdir(cwd) == 0);
	free(cwd);
}

static void test_manifest_mode(void)
{
	struct config cfg = {0};
	char err[512], text[700];
	const char *p, *u;

	static const char *const secret[] = {
	    "[a]\nsource = https://h/\nuser = u:p\n",
	    "[a]\nsource = https://h/\nheader = Authorization: Bearer x\n",
	    "[a]\nsource = https://u:p@h/\n",
	};
	for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
		p = write_mode("secret.ini", secret[i], 0644);
		CHECK(load(&cfg, p, err) == -1);
		CHECK_ERR(err,
		          "holds credentials but is accessible by group or others (mode 0644)");
		CHECK(cfg.files.len == 0);
		CHECK(chmod(p, 0600) == 0);
		CHECK(load(&cfg, p, err) == 0 && cfg.files.len == 1);
		config_free(&cfg);
	}
	/* No credentials in it: any mode. A user name alone is no secret. */
	p = write_mode("plain.ini", "[a]\nsource = https://u@h/\n[b]\nsource = cmd:true\n", 0644);
	CHECK(load(&cfg, p, err) == 0 && cfg.files.len == 2);
	config_free(&cfg);
	/* Credentials in files it names: the manifest itself may be readable. */
	u = write_mode("m-user.txt", "u:p\n", 0600);
	snprintf(text, sizeof(text), "[a]\nsource = https://h/\nuser = @%s\nheader = @%s\n", u,
	         write_mode("m-hdr.txt", "X-K: v\n", 0600));
	p = write_mode("indirect.ini", text, 0644);
	CHECK(load(&cfg, p, err) == 0 && cfg.files.len == 1);
	CHECK(cfg.files.len == 1 && !strcmp(cfg.files.ptr[0].opts.userpwd, "u:p") &&
	      cfg.files.ptr[0].opts.headers.len == 1);
	config_free(&cfg);
}

static void test_scrub_argv(void)
{
	const char *args[] = {"streamfs",
	                      "--user=alice:pw1",
	                      "--header",
	                      "Authorization: Bearer pw2",
	                      "--head=X-K:pw3",
	                      "--us",
	                      "bob:pw4",
	                      "--header=Accept;",
	                      "--proxy=http://eve:pw6@p:3128",
	                      "mnt",
	                      "a=https://carol:pw5@h:8443/p?q=1",
	                      "b=https://dave@h/",
	                      "c=cmd:echo x:y@z"};
	const char *want[] = {"streamfs",
	                      "--user=alice:***",
	                      "--header",
	                      "Authorization: **********",
	                      "--head=X-K:***",
	                      "--us",
	                      "bob:***",
	                      "--header=Accept;",
	                      "--proxy=http://eve:***@p:3128",
	                      "mnt",
	                      "a=https://carol:***@h:8443/p?q=1",
	                      "b=https://dave@h/",
	                      "c=cmd:echo x:y@z"};
	enum { N = sizeof(args) / sizeof(args[0]) };
	char *argv[N + 1];
	struct config cfg;
	char err[512];
	int i;

	for (i = 0; i < N; i++)
		argv[i] = strdup(args[i]);
	argv[N] = NULL;
	CHECK(config_parse_args(&cfg, N, argv, err, sizeof(err)) == 0);
	for (i = 0; i < N; i++) {
		if (strcmp(argv[i], want[i]))
			fprintf(stderr, "argv[%d] = '%s', want '%s'\n", i, argv[i], want[i]);
		CHECK(!strcmp(argv[i], want[i]));
		free(argv[i]);
	}
	/* The parsed copies keep the real values (the last --user wins). */
	CHECK(cfg.files.len == 3 && !strcmp(cfg.files.ptr[0].opts.userpwd, "bob:pw4"));
	CHECK(cfg.files.len == 3 &&
	      !strcmp(cfg.files.ptr[0].arg, "https://carol:pw5@h:8443/p?q=1"));
	CHECK(cfg.files.len == 3 && cfg.files.ptr[0].opts.headers.len == 3 &&
	      !strcmp(cfg.files.ptr[0].opts.headers.ptr[0], "Authorization: Bearer pw2"));
	config_free(&cfg);
}

static void test_add_request(void)
{
	char err[512], u[600], h[600], *cwd;
	char **f = NULL;
	size_t n = 0;

	snprintf(u, sizeof(u), "user=@%s", write_mode("a-user.txt", "alice:pw1\n", 0600));
	snprintf(h, sizeof(h), "--header=@%s", write_mode("a-hdr.txt", "X-A: pw2\nX-B: 3\n", 0600));
	write_mode("a-netrc", "machine h login a password p\n", 0600);
	const char *args[] = {"x=https://bob:pw3@h/", u,           h,
	                      "netrc-file=a-netrc",   "--size=1K", "header=X-C: pw4",
	                      "--user=carol:pw5",     "insecure"};
	enum { N = sizeof(args) / sizeof(args[0]) };
	char *argv[N];
	for (int i = 0; i < N; i++)
		argv[i] = strdup(args[i]);
	cwd = getcwd(NULL, 0);
	CHECK(cwd && chdir(tmpdir) == 0);
	CHECK(config_add_request(N, argv, &f, &n, err, sizeof(err)) == 0);
	CHECK(cwd && chdir(cwd) == 0);
	free(cwd);
	char netrc[600];
	snprintf(netrc, sizeof(netrc), "netrc-file=%s/a-netrc", tmpdir);
	const char *want[] = {"add",
	                      "x=https://bob:pw3@h/",
	                      "user=alice:pw1",
	                      "header=X-A: pw2",
	                      "header=X-B: 3",
	                      netrc,
	                      "size=1K",
	                      "header=X-C: pw4",
	                      "user=carol:pw5",
	                      "insecure"};
	CHECK(n == sizeof(want) / sizeof(want[0]) && f && !f[n]);
	for (size_t i = 0; f && i < n && i < sizeof(want) / sizeof(want[0]); i++) {
		if (strcmp(f[i], want[i]))
			fprintf(stderr, "field %zu = '%s', want '%s'\n", i, f[i], want[i]);
		CHECK(!strcmp(f[i], want[i]));
	}
	config_strv_free(f);
	/* The client's own argv no longer shows the secrets. */
	CHECK(!strcmp(argv[0], "x=https://bob:***@h/"));
	CHECK(!strcmp(argv[5], "header=X-C: ***") && !strcmp(argv[6], "--user=carol:***"));
	CHECK(!strcmp(argv[1], u) && !strcmp(argv[4], "--size=1K"));
	for (int i = 0; i < N; i++)
		free(argv[i]);

	/* A file that cannot be read: the client says so, nothing is sent. */
	char *bad[] = {strdup("x=cmd:true"), strdup("user=@/nonexistent/u")};
	CHECK(config_add_request(2, bad, &f, &n, err, sizeof(err)) == -1 && !f);
	CHECK_ERR(err, "cannot read '/nonexistent/u'");
	free(bad[0]);
	free(bad[1]);
}

/* --size-unknown is the mount's; a file's own --size (command line,
 * manifest) is marked as given, so the mount's default spares it. */
static void test_size_unknown(void)
{
	struct config cfg;
	struct file_opts o;
	char err[512];
	double sec;

	CHECK(PARSE(&cfg, err, "mnt", "a=cmd:true") == 0);
	CHECK(!cfg.size_unknown_wait && !cfg.files.ptr[0].opts.size_given);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--size-unknown=wait", "mnt", "a=cmd:true") == 0);
	CHECK(cfg.size_unknown_wait && !cfg.files.ptr[0].opts.size_given);
	CHECK(cfg.files.ptr[0].opts.size == SIZE_AUTO);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "mnt", "--size-unknown", "WAIT", "--size=auto", "a=cmd:true") == 0);
	CHECK(cfg.size_unknown_wait && cfg.files.ptr[0].opts.size_given);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--size-unknown=wait", "--size-unknown=auto", "mnt") == 0);
	CHECK(!cfg.size_unknown_wait);
	config_free(&cfg);
	PARSE_FAILS("bad --size-unknown value 'grow': expected auto or wait", "--size-unknown=grow",
	            "mnt");
	PARSE_FAILS("bad --size-unknown value '': expected auto or wait", "--size-unknown=", "mnt");
	PARSE_FAILS("option '--size-unknown' needs a value", "mnt", "--size-unknown");

	config_file_opts_default(&o);
	CHECK(!o.size_given);
	CHECK(set(&o, "size", "bogus", err) == -1 && !o.size_given);
	CHECK(set(&o, "size", "auto", err) == 0 && o.size_given && o.size == SIZE_AUTO);
	config_file_opts_free(&o);

	CHECK(config_parse_seconds("2.5", &sec) == 0 && sec == 2.5);
	CHECK(config_parse_seconds(".5", &sec) == 0 && sec == 0.5);
	CHECK(config_parse_seconds("0", &sec) == 0 && sec == 0);
	CHECK(config_parse_seconds("", &sec) == -1 && config_parse_seconds("1e3", &sec) == -1);
	CHECK(config_parse_seconds("-1", &sec) == -1 && config_parse_seconds("5s", &sec) == -1);
	CHECK(config_parse_seconds("99999999999", &sec) == -1);
}

/* The store budget and keep=: values, defaults, refusals. */
/* s3://BUCKET/KEY and the S3 options, on the command line and in a
 * manifest. */
static void test_s3(void)
{
	struct config cfg;
	char err[512];

	CHECK(PARSE(&cfg, err, "--region=eu-west-3", "--endpoint-url", "http://127.0.0.1:4568",
	            "--force-path-style", "--no-sign-request", "--profile=dev", "mnt",
	            "a/b.bin=s3://bkt/dir/a b.bin") == 0);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].kind == SOURCE_S3);
	if (cfg.files.len == 1) {
		const struct file_opts *o = &cfg.files.ptr[0].opts;
		CHECK(!strcmp(cfg.files.ptr[0].arg, "s3://bkt/dir/a b.bin"));
		CHECK(o->region && !strcmp(o->region, "eu-west-3"));
		CHECK(o->endpoint_url && !strcmp(o->endpoint_url, "http://127.0.0.1:4568"));
		CHECK(o->profile && !strcmp(o->profile, "dev"));
		CHECK(o->force_path_style && o->no_sign_request);
		CHECK(!strcmp(config_source_kind_name(cfg.files.ptr[0].kind), "s3"));
	}
	config_free(&cfg);

	PARSE_FAILS("bad S3 URI 's3://bkt' for 'x': no key", "mnt", "x=s3://bkt");
	PARSE_FAILS("bad S3 URI 's3://bkt/' for 'x': no key", "mnt", "x=s3://bkt/");
	PARSE_FAILS("bad S3 URI 's3:///k' for 'x': no bucket", "mnt", "x=s3:///k");
	PARSE_FAILS("bad S3 URI 's3:bkt/k' for 'x'", "mnt", "x=s3:bkt/k");
	PARSE_FAILS("bad --region value 'EU WEST': expected an AWS region name", "--region=EU WEST",
	            "mnt", "x=s3://b/k");
	PARSE_FAILS("bad --region value 'a:b'", "--region=a:b", "mnt", "x=s3://b/k");
	PARSE_FAILS("bad --endpoint-url value 'localhost:9000': expected http(s)://HOST[:PORT]",
	            "--endpoint-url=localhost:9000", "mnt", "x=s3://b/k");
	PARSE_FAILS("bad --endpoint-url value 'http://'", "--endpoint-url=http://", "mnt",
	            "x=s3://b/k");
	PARSE_FAILS("bad --profile value", "--profile=a]b", "mnt", "x=s3://b/k");
	PARSE_FAILS("missing MOUNTPOINT", "x=s3://b/k");

	const char *m = write_file("s3.ini", "[obj]\nsource = s3://bkt/k\nregion = us-west-2\n"
	                                     "endpoint_url = https://s3.example\n"
	                                     "force_path_style = yes\nno-sign-request = true\n");
	CHECK(PARSE(&cfg, err, "-c", m, "mnt") == 0);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].kind == SOURCE_S3);
	if (cfg.files.len == 1) {
		const struct file_opts *o = &cfg.files.ptr[0].opts;
		CHECK(o->region && !strcmp(o->region, "us-west-2"));
		CHECK(o->endpoint_url && !strcmp(o->endpoint_url, "https://s3.example"));
		CHECK(o->force_path_style && o->no_sign_request && !o->profile);
	}
	config_free(&cfg);
	m = write_file("s3bad.ini", "[obj]\nsource = s3://bkt/k\nregion = nope!\n");
	PARSE_FAILS("bad region value 'nope!'", "-c", m, "mnt");
}

static void test_cache_options(void)
{
	struct config cfg;
	char err[512];
	char **f = NULL;
	size_t n = 0;

	CHECK(PARSE(&cfg, err, "mnt") == 0);
	CHECK(cfg.cache_size == 0 && cfg.cache_min_free_pct == 5);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--cache-size=256M", "--cache-min-free=2.5%", "--keep=64M", "mnt",
	            "a=cmd:yes") == 0);
	CHECK(cfg.cache_size == 256ULL << 20 && cfg.cache_min_free_pct == 2.5);
	CHECK(cfg.files.len == 1 && cfg.files.ptr[0].opts.keep == 64ULL << 20);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "--cache-min-free=1G", "--cache-size=2M", "mnt") == 0);
	CHECK(cfg.cache_min_free == 1ULL << 30 && cfg.cache_min_free_pct < 0);
	CHECK(cfg.cache_size == 2ULL << 20);
	config_free(&cfg);
	PARSE_FAILS("at least 2M", "--cache-size=2047K", "mnt");
	PARSE_FAILS("at least 2M", "--cache-size=1M", "mnt");
	PARSE_FAILS("bad --cache-size value 'x'", "--cache-size=x", "mnt");
	PARSE_FAILS("over 100%", "--cache-min-free=100.5%", "mnt");
	PARSE_FAILS("bad --cache-min-free value", "--cache-min-free=%", "mnt");
	PARSE_FAILS("bad --cache-min-free value", "--cache-min-free=-1%", "mnt");
	CHECK(PARSE(&cfg, err, "--persist", "--cache-dir=/x", "mnt") == 0 && cfg.persist);
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, "mnt") == 0 && !cfg.persist);
	config_free(&cfg);
	PARSE_FAILS("--persist needs --cache-dir DIR", "--persist", "mnt");
	PARSE_FAILS("(not memory)", "--persist", "--cache-dir=memory", "mnt");
	PARSE_FAILS("bad --keep value '0'", "--keep=0", "mnt");
	PARSE_FAILS("bad --keep value", "--keep=", "mnt");
	/* add: a bad value is refused before the daemon is asked */
	char *bad[] = {strdup("x=cmd:yes"), strdup("keep=0")};
	CHECK(config_add_request(2, bad, &f, &n, err, sizeof(err)) == -1);
	CHECK_ERR(err, "bad keep value '0'");
	free(bad[0]);
	free(bad[1]);
	char *good[] = {strdup("x=cmd:yes"), strdup("--keep=1G")};
	CHECK(config_add_request(2, good, &f, &n, err, sizeof(err)) == 0);
	CHECK(n == 3 && !strcmp(f[2], "keep=1G"));
	config_strv_free(f);
	free(good[0]);
	free(good[1]);
}

/* -o: mount-wide options as in fstab, FUSE's kept, mount(8)'s dropped. */
static void test_mount_opts(void)
{
	struct config cfg;
	char err[512];

	CHECK(PARSE(&cfg, err, "-o",
	            "rw,nofail,_netdev,users,user=bob,x-systemd.automount,comment=x,defaults,"
	            "cache_size=64M,cache-min-free=1%,allow_other,nosuid,fsname=media",
	            "-o", "cache_dir=/var/cache/s,size_unknown=wait,verbose", "mnt") == 0);
	CHECK(cfg.cache_size == 64u << 20 && cfg.cache_min_free_pct == 1);
	CHECK(!strcmp(cfg.cache_dir, "/var/cache/s") && cfg.size_unknown_wait);
	CHECK(cfg.verbosity == 1 && cfg.files.len == 0);
	CHECK(cfg.fuse_opts.len == 3 && !strcmp(cfg.fuse_opts.ptr[0], "allow_other"));
	CHECK(!strcmp(cfg.fuse_opts.ptr[1], "nosuid") &&
	      !strcmp(cfg.fuse_opts.ptr[2], "fsname=media"));
	config_free(&cfg);

	PARSE_FAILS("unknown mount option 'bogus' in -o", "-o", "ro,bogus", "mnt");
	PARSE_FAILS("mount option 'size' is a per-file option", "-o", "size=1M", "mnt");
	PARSE_FAILS("mount option 'cache_size' needs a value", "-o", "cache_size", "mnt");
	PARSE_FAILS("mount option 'allow_other' takes no value", "-o", "allow_other=1", "mnt");
	PARSE_FAILS("mount option 'verbose' takes no value", "-o", "verbose=2", "mnt");
	PARSE_FAILS("mount option 'fsname' needs a value", "-o", "fsname", "mnt");
	PARSE_FAILS("bad --cache-size value '1x'", "-o", "cache_size=1x", "mnt");
	PARSE_FAILS("unknown mount option 'config' in -o", "-o", "config=/x", "mnt");

	/* MANIFEST MOUNTPOINT: the form mount.fuse3 runs. */
	const char *m = write_file("fstab.ini", "[a]\nsource = cmd:echo a\n");
	CHECK(PARSE(&cfg, err, m, "mnt", "-o", "rw,cache_size=2M") == 0);
	CHECK(!strcmp(cfg.mountpoint, "mnt") && !strcmp(cfg.manifest, m));
	CHECK(cfg.files.len == 1 && !strcmp(cfg.files.ptr[0].name, "a"));
	CHECK(cfg.cache_size == 2u << 20);
	/* The manifest is the mount's source, as fstab names it. */
	CHECK(cfg.fuse_opts.len == 1 && !strncmp(cfg.fuse_opts.ptr[0], "fsname=", 7));
	CHECK(!strcmp(cfg.fuse_opts.ptr[0] + 7, m));
	config_free(&cfg);
	CHECK(PARSE(&cfg, err, m, "mnt", "-o", "fsname=media") == 0);
	CHECK(cfg.fuse_opts.len == 1 && !strcmp(cfg.fuse_opts.ptr[0], "fsname=media"));
	config_free(&cfg);
	/* libfuse splits -o at commas: one in the name is escaped. */
	const char *mc = write_file("a,b\\c.ini", "[a]\nsource = cmd:echo a\n");
	CHECK(PARSE(&cfg, err, mc, "mnt") == 0);
	CHECK(cfg.fuse_opts.len == 1 && strstr(cfg.fuse_opts.ptr[0], "/a\\,b\\\\c.ini"));
	config_free(&cfg);
	/* A missing manifest is named as one. */
	PARSE_FAILS("cannot read manifest '/nonexistent/m.ini'", "/nonexistent/m.ini", tmpdir);
	/* The usual form is unchanged: one NAME=SOURCE after the mount point. */
	CHECK(PARSE(&cfg, err, "mnt", "a=cmd:ls") == 0);
	CHECK(!strcmp(cfg.mountpoint, "mnt") && !cfg.manifest && cfg.files.len == 1);
	config_free(&cfg);
	/* A file then a NAME=SOURCE: the usual form (the mount then says the
	 * mount point is not a directory). */
	CHECK(PARSE(&cfg, err, m, "a=cmd:ls") == 0);
	CHECK(!strcmp(cfg.mountpoint, m) && !cfg.manifest && cfg.files.len == 1);
	config_free(&cfg);
}

static void test_proxy(void)
{
	static const char *const bad[] = {
	    "",          "cache:3128", "ftp://c",     "socks5://c:1", "http://",
	    "http:///x", "http://a b", "https://:80", "http\x01://c"};
	struct file_opts o, c;
	char err[512];
	size_t i;

	config_file_opts_default(&o);
	CHECK(!o.proxy && !o.noproxy);
	CHECK(set(&o, "proxy", "http://cache.lan:3128", err) == 0);
	CHECK(!strcmp(o.proxy, "http://cache.lan:3128"));
	CHECK(set(&o, "proxy", "HTTPS://u:p@[::1]:8443/", err) == 0);
	CHECK(!strcmp(o.proxy, "HTTPS://u:p@[::1]:8443/"));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		SET_FAILS("proxy", bad[i], "expected an http:// or https:// URL");
	/* A password is never quoted back. */
	SET_FAILS("proxy", "socks5://bob:s3cret@h:1", "bad --proxy value (not shown)");
	CHECK(!strstr(err, "s3cret"));
	CHECK(set(&o, "noproxy", "localhost,.lan,10.0.0.0/8", err) == 0);
	CHECK(!strcmp(o.noproxy, "localhost,.lan,10.0.0.0/8"));
	SET_FAILS("noproxy", "", "bad --noproxy value ''");
	SET_FAILS("noproxy", "a, b", "bad --noproxy value");
	CHECK(config_file_opts_copy(&c, &o) == 0);
	CHECK(c.proxy != o.proxy && !strcmp(c.proxy, o.proxy) && !strcmp(c.noproxy, o.noproxy));
	config_file_opts_free(&c);
	config_file_opts_free(&o);
}

int main(void)
{
	int i;

	t_init();
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 2;
	}
	RUN(test_defaults);
	RUN(test_sizes);
	RUN(test_options);
	RUN(test_names);
	RUN(test_parse_file);
	RUN(test_args);
	RUN(test_size_unknown);
	RUN(test_manifest);
	RUN(test_secret_files);
	RUN(test_manifest_mode);
	RUN(test_scrub_argv);
	RUN(test_add_request);
	RUN(test_cache_options);
	RUN(test_mount_opts);
	RUN(test_proxy);
	RUN(test_s3);
	for (i = 0; i < ntmpfiles; i++) {
		unlink(tmpfiles[i]);
		free(tmpfiles[i]);
	}
	if (rmdir(tmpdir))
		fprintf(stderr, "rmdir %s: %s\n", tmpdir, strerror(errno));
	return t_finish("config");
}
