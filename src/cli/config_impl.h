/*
 * config_impl.h - what the pieces of the configuration parser share. The
 * rest of the program sees only config.h.
 *
 *   config.c    the command lines of mount and of add; messages (cfg_fail, cfg_esc)
 *   options.c   per-file options: one descriptor per option, a parser per value
 *   secrets.c   credentials: user/header=@FILE, netrc files, private modes, argv
 *   names.c     NAME=SOURCE: names, sources, names that cannot both exist
 *   manifest.c  the manifest (-c FILE), read with libinih
 *
 * The rules of config.h hold for every piece: nothing is printed, nothing
 * exits; a problem is one line in the caller's @err, with user text quoted
 * through cfg_esc(); a function that fails leaves its output as the
 * header says (empty or unchanged) and leaks nothing.
 */
#ifndef STREAMFS_CONFIG_IMPL_H
#define STREAMFS_CONFIG_IMPL_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#define ESC_LEN 80 /* room for one quoted value in a message */

/* ---- messages (config.c) ---- */

/* Format into @err (if any); returns -1, for "return cfg_fail(...)". */
__attribute__((format(printf, 3, 4))) int cfg_fail(char *err, size_t errlen, const char *fmt, ...);

/*
 * @s rendered into @buf for a message: control bytes escaped (\n, \t,
 * \xNN) so the message stays on one line, and cut with "..." when it would
 * not fit in @size bytes (@size >= 4). Returns @buf.
 */
const char *cfg_esc(char *buf, size_t size, const char *s);

/* ---- string vectors (options.c) ---- */

/* Append a copy of @s, keeping ptr[len] NULL. On failure (-1, ENOMEM)
 * @v is unchanged. */
int strings_add(struct config_strings *v, const char *s);
/* Free every string and the array. */
void strings_free(struct config_strings *v);

/* ---- per-file options (options.c) ---- */

enum fopt_id {
	FO_SIZE,
	FO_START,
	FO_READ,
	FO_FILL,
	FO_HEADER,
	FO_INSECURE,
	FO_RETRIES,
	FO_RETRY_TIME,
	FO_STALL_TIMEOUT,
	FO_CONNECT_TIMEOUT,
	FO_MAX_REDIRS,
	FO_USER,
	FO_LOCATION_TRUSTED,
	FO_NETRC,
	FO_NETRC_FILE,
	FO_KEEP,
	FO_PROXY,
	FO_NOPROXY,
	FO_REGION,
	FO_ENDPOINT_URL,
	FO_PROFILE,
	FO_FORCE_PATH_STYLE,
	FO_NO_SIGN_REQUEST,
	FO_COUNT
};

/* What a value parser returns. */
enum fopt_result {
	FOPT_OK = 0,
	FOPT_BAD,       /* not what the descriptor's @expect says */
	FOPT_TOO_LARGE, /* the right form, but too large */
	FOPT_NOMEM,
	FOPT_SAID, /* the parser has written its own message */
};

/* One of the words of an enumerated option, and the value it means. */
struct keyword {
	const char *word;
	int value;
};

struct fopt;
typedef enum fopt_result fopt_parse_fn(struct file_opts *o, const struct fopt *d, const char *value,
                                       char *err, size_t errlen);

/* One per-file option. */
struct fopt {
	const char *name;            /* without "--", as the manifest writes it */
	const char *expect;          /* what a good value looks like, for FOPT_BAD */
	fopt_parse_fn *parse;        /* sets the option in @o, or leaves @o unchanged */
	size_t field;                /* offsetof() the field the shared parsers set */
	const struct keyword *words; /* an enum's words, NULL-terminated */
	bool flag;                   /* a boolean: a bare --name means true */
	bool repeat;                 /* may be given more than once (header) */
	bool secret;                 /* a credential: may be @FILE, wiped from argv,
	                              * makes a manifest that holds it private */
	bool hidden;                 /* its value never appears in a message */
	bool path;                   /* a file name: must not be empty */
};

extern const struct fopt fopts[FO_COUNT];

/* BYTES (digits, then K, M, G or T, binary, and "B" or "iB"). Returns 0,
 * -EINVAL or -ERANGE (beyond INT64_MAX). */
int config_parse_bytes(const char *s, uint64_t *out);

/* The id of option @key (case-insensitive, '_' for '-'), or -1. */
int fopt_find(const char *key);

/*
 * Set option @id from @value (NULL for a bare flag); @dash is "--" on the
 * command line and "" in a manifest, so that messages use the spelling
 * the user wrote. Returns 0, or -1 with @err set and @o unchanged.
 */
int fopt_set(struct file_opts *o, int id, const char *value, const char *dash, char *err,
             size_t errlen);

/* ---- credentials (secrets.c) ---- */

/*
 * fopt_set(), but a secret's value "@FILE" names the file that holds it:
 * one USER:PASSWORD line, or one header per line. Returns 0, or -1 with
 * @err set and @o unchanged.
 */
int fopt_set_arg(struct file_opts *o, int id, const char *value, const char *dash, char *err,
                 size_t errlen);

/* The parser of netrc-file: an absolute path, checked now. */
fopt_parse_fn parse_netrc_file;

/*
 * A regular file that holds credentials must be its owner's alone, as ssh
 * demands of private keys. @what names the file in the message ("netrc
 * file"). Returns 0, or -1 with @err set.
 */
int check_private(const struct stat *st, const char *what, const char *path, char *err,
                  size_t errlen);

/* Where the password of "scheme://user:password@host..." is: false if none. */
bool url_password(const char *url, size_t *off, size_t *len);

/*
 * Overwrite, in an argv string, the secret that option @id (or, for -1, a
 * NAME=SOURCE) carries, so that ps no longer shows it.
 */
void scrub_arg(int id, char *value);

/* ---- names and sources (names.c) ---- */

/* Length of the scheme if @s starts with one of ours and ':', else 0. */
size_t url_scheme_len(const char *s);

/* Is the host of "[user[:pw]@]host[:port][/path]" (what follows "://")
 * there? curl's own parser takes "http:///path" and the like. */
bool url_has_host(const char *rest);

/*
 * Check @src and set f->source, f->kind and f->arg; @f->name (validated)
 * names the file in messages. On failure @f is unchanged.
 */
int parse_source(struct file_spec *f, const char *src, char *err, size_t errlen);

/* Two names that cannot both exist: equal ones, or "a" and "a/b". */
struct clash {
	size_t first, second; /* indexes, first < second */
	bool dup;             /* equal; otherwise one is the other's directory */
};

/*
 * Find a clash among @n names, the i-th being name_of(@ctx, i). Returns 0
 * if there is none, 1 with @c set if there is, -1 on ENOMEM.
 */
int find_clash(size_t n, const char *(*name_of)(const void *ctx, size_t i), const void *ctx,
               struct clash *c);

/*
 * The message for two names of which one would have to be the other's
 * directory, each quoted between @quote[0] and @quote[1] ("''" or "[]").
 * Returns -1.
 */
int fail_file_and_dir(char *err, size_t errlen, const char *n1, const char *n2, const char *quote);

#endif
