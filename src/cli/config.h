/*
 * config.h - the command line and the manifest, parsed into one struct.
 *
 * Everything the user can say is checked here, before anything is mounted:
 * a bad value produces one clear line (in @err) naming what is wrong, and
 * the caller exits non-zero. No function here prints or exits; the file
 * system is touched only to read the manifest, the @FILE values of
 * --user/--header, and to check a --netrc-file.
 *
 * Syntax accepted (README.md and man/streamfs.1 say it for users):
 *   streamfs [OPTIONS] MOUNTPOINT [NAME=SOURCE]...
 *   SOURCE: cmd:COMMAND | pipe:PATH | - | http://... https://... ftp://... ftps://...
 *     | s3://BUCKET/KEY
 *   mount-wide: --size-unknown=auto|wait (what stat shows, for files whose
 *     --size is not given, while a stream with no announced length runs)
 *   per-file options, given once on the command line for every file there:
 *     --size=auto|wait|BYTES (BYTES may carry K/M/G/T binary suffixes)
 *     --start=access|mount   --read=full|partial   --fill=all|ondemand
 *     URL options: --header='Name: value' (repeatable), --insecure,
 *     --retries=N, --retry-time=SECONDS, --stall-timeout=SECONDS,
 *     --connect-timeout=SECONDS, --max-redirs=N, --user=USER:PASSWORD,
 *     --location-trusted (send credentials/headers after redirects to
 *     other hosts), --netrc, --netrc-file=FILE, --keep=BYTES (keep only
 *     the last BYTES: endless streams), --proxy=URL (an http:// or
 *     https:// proxy), --noproxy=LIST (hosts reached without it)
 *     S3 options: --region=REGION, --endpoint-url=URL, --profile=NAME,
 *     --force-path-style, --no-sign-request
 *   store budget: --cache-size=BYTES, --cache-min-free=BYTES|N% (default 5%)
 *   --persist (with --cache-dir DIR): URL streams keep their bytes there
 *   secrets: on the command line and in a manifest, --user=@FILE reads
 *     USER:PASSWORD from FILE's one line, --header=@FILE one header per
 *     line; such a FILE, a netrc file, and a manifest holding a user,
 *     header or URL password must not be accessible by group or others
 *     (as ssh demands of keys) when they are regular files. Secrets
 *     given on the command line are overwritten in argv once copied
 *     (passwords, header values), so /proc/PID/cmdline no longer shows
 *     them.
 *   manifest (-c FILE, INI, libinih): one section per file, the section
 *   name is NAME; keys: source (required), and the per-file options without
 *   "--" (size, start, read, header (repeatable), insecure = true|false, ...).
 *   A section named [streamfs] is refused (reserved). Files from the
 *   manifest come first, then those on the command line; a name given
 *   twice is an error.
 */
#ifndef STREAMFS_CONFIG_H
#define STREAMFS_CONFIG_H

#include "vector.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Strings owned by the vector. Once one is added, ptr[len] is NULL, so
 * ptr can go where a NULL-terminated array is expected (fs_mount()). */
DEFINE_VECTOR(config_strings, char *);

/*
 * What stat shows while a stream runs. SIZE_WAIT_UNKNOWN is never parsed:
 * files_add() gives it to a file whose own --size was not given when the
 * mount says --size-unknown=wait (an announced length at once, else wait
 * for the end).
 */
enum size_policy { SIZE_AUTO, SIZE_WAIT, SIZE_FIXED, SIZE_WAIT_UNKNOWN };
enum start_policy { START_ACCESS, START_MOUNT };
enum read_policy { READ_FULL, READ_PARTIAL };
enum fill_policy { FILL_ALL, FILL_ONDEMAND };
enum source_kind { SOURCE_CMD, SOURCE_PIPE, SOURCE_STDIN, SOURCE_URL, SOURCE_S3 };

/* Per-file options. Defaults come from config_file_opts_default(). */
struct file_opts {
	enum size_policy size;
	uint64_t size_bytes; /* SIZE_FIXED */
	bool size_given;     /* --size was given for this file: the mount's
	                      * --size-unknown does not apply to it */
	enum start_policy start;
	enum read_policy read;
	enum fill_policy fill; /* URL sources: download everything, or only what is read */

	/* URL sources */
	struct config_strings headers; /* "Name: value" */
	bool insecure;                 /* default false: TLS verification on */
	bool location_trusted;         /* default false */
	char *userpwd;                 /* "user:password" or NULL; owned */
	bool netrc;                    /* default false: look the host up in ~/.netrc */
	char *netrc_file;              /* absolute path of another netrc file, or NULL; owned */
	int retries;                   /* default 5 */
	double retry_time;             /* seconds, default 60 */
	double stall_timeout;          /* seconds without a byte, default 30 */
	double connect_timeout;        /* seconds, default 15 */
	int max_redirs;                /* default 10 */
	char *proxy;                   /* --proxy: http(s) proxy URL, or NULL (libcurl's
	                                * environment variables apply); owned */
	char *noproxy;                 /* --noproxy: hosts reached directly, or NULL; owned */

	uint64_t keep; /* keep only the last KEEP bytes (endless streams); 0: all */

	/* s3:// sources (NULL: looked up as the AWS CLI does, see s3.h) */
	char *region;          /* owned */
	char *endpoint_url;    /* owned */
	char *profile;         /* owned */
	bool force_path_style; /* default false: virtual-hosted where possible */
	bool no_sign_request;  /* default false: sign with the credentials found */
};

/* The store's accounting block (cache.h's CACHE_BLOCK). */
#define CONFIG_CACHE_BLOCK (1u << 20)

struct file_spec {
	char *name;   /* validated relative path, e.g. "dir/a.bin"; owned */
	char *source; /* as written, e.g. "cmd:ls -l"; owned */
	enum source_kind kind;
	char *arg; /* the command, the path, or the URL; NULL for stdin; owned */
	struct file_opts opts;
};

DEFINE_VECTOR(config_files, struct file_spec);

struct config {
	char *mountpoint;                /* as given; owned */
	char *manifest;                  /* -c FILE or NULL; owned */
	bool foreground;                 /* -f */
	int verbosity;                   /* 0 normal, -1 with -q, +1 per -v */
	char *cache_dir;                 /* --cache-dir DIR; NULL means the default */
	bool memory_store;               /* --cache-dir=memory: keep bytes in RAM (memfd) */
	bool size_unknown_wait;          /* --size-unknown=wait: files without --size wait
	                                  * in stat for the end of a stream with no
	                                  * announced length */
	uint64_t cache_size;             /* --cache-size: bytes for all streams; 0 no limit */
	bool persist;                    /* --persist: URL streams keep their bytes in
	                                  * cache_dir across mounts */
	uint64_t cache_min_free;         /* --cache-min-free=BYTES */
	double cache_min_free_pct;       /* --cache-min-free=N% (default 5), or -1 for BYTES */
	struct config_strings fuse_opts; /* each -o argument */
	struct config_files files;       /* the manifest's first, then the command line's */
	bool show_help;                  /* -h/--help: caller prints usage, exits 0 */
	bool show_version;               /* --version */
};

/*
 * Seconds as the options take them: "30", "2.5", ".5", at most about 31
 * years, parsed without the locale. Returns 0 with *@out set, or -1.
 */
int config_parse_seconds(const char *s, double *out);

/* Default per-file options. Can't fail. */
void config_file_opts_default(struct file_opts *o);

/*
 * Set one per-file option by its name without "--" ("size", "start",
 * "read", "header", "insecure", "retries", ...). @value is NULL for a bare
 * flag (allowed only for boolean options). Returns 0, or -1 with a message
 * in @err such as "bad --size value 'abc': expected auto, wait or a byte
 * count". On failure @o is unchanged.
 */
int config_set_file_option(struct file_opts *o, const char *key, const char *value, char *err,
                           size_t errlen);

/*
 * Check a file name: a relative path of non-empty components separated by
 * '/', none of them "." or "..", no leading or trailing '/', no control
 * characters (bytes below 0x20, 0x7f: they would break status output and
 * line-based protocols), at most 4095 bytes in all and 255 per component.
 * Returns 0 or -1 with @err set.
 */
int config_validate_name(const char *name, char *err, size_t errlen);

/*
 * Parse "NAME=SOURCE" (split at the first '='), validate the name and the
 * source (known kind, non-empty command/path, URL with a host), and fill
 * @out with a copy of @defaults. Returns 0, or -1 with @err set and @out
 * left empty (nothing to free).
 */
int config_parse_file(const char *arg, const struct file_opts *defaults, struct file_spec *out,
                      char *err, size_t errlen);

/*
 * Parse the mount command line (argv[0] is the program; no subcommand).
 * Loads the manifest if -c is given. Checks duplicates (and a name that
 * another one needs as its directory: "a" and "a/b"), that exactly one
 * mountpoint is given (unless -h/--version, which stop parsing at once), and
 * that "-" is used at most once. @cfg is overwritten, not freed, first.
 * The strings of @argv keep their places, but the secrets in them (the
 * password of --user and of URLs, the value of --header) are overwritten
 * with '*' once copied.
 * Returns 0, or -1 with @err set; free @cfg with config_free() either way.
 */
int config_parse_args(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/*
 * Read a manifest file and append its files to @cfg. Returns 0, or -1 with
 * @err naming the file, the line and the problem ("streamfs.ini:7: unknown
 * key 'sise' in [video.mp4]").
 */
int config_load_manifest(struct config *cfg, const char *path, char *err, size_t errlen);

/*
 * "streamfs add": the request fields for @argv ("NAME=SOURCE" then
 * "OPTION=VALUE"..., @argc of them): "add", NAME=SOURCE, then each option
 * as "key=value" (without "--"), where user=@FILE and header=@FILE are
 * read here, by the caller (the daemon would read them as itself, from
 * "/"), and a relative netrc-file becomes absolute. Values are checked by
 * the daemon, not here. Secrets in @argv are overwritten as in
 * config_parse_args(). Returns 0 with a NULL-terminated malloc'ed array in
 * *@fields (free with config_strv_free()), or -1 with @err set.
 */
int config_add_request(int argc, char **argv, char ***fields, size_t *nfields, char *err,
                       size_t errlen);
void config_strv_free(char **v);

/* Free everything @cfg owns and zero it. NULL is fine. */
void config_free(struct config *cfg);
void config_file_spec_free(struct file_spec *f);
void config_file_opts_free(struct file_opts *o);

/* Deep copy of @src into @dst. Returns 0 or -1 (ENOMEM). */
int config_file_opts_copy(struct file_opts *dst, const struct file_opts *src);

/* "cmd", "pipe", "stdin", "url", "s3". */
const char *config_source_kind_name(enum source_kind k);

#endif
