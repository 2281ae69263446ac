/*
 * files.c - turn a file_spec into a stream and a tree entry (see
 * files.h).
 *
 * A file_spec says what the user asked for; here it becomes a source of
 * the right kind with its own options (the URL source's struct url_opts
 * is a view of the file's options), a stream with its store, and an
 * entry in the tree. A failure is one line in @err naming the file.
 */
#include "files.h"

#include "fs.h"
#include "log.h"
#include "streamfs/persist.h"
#include "streamfs/s3.h"
#include "streamfs/source.h"
#include "streamfs/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *files_store_dir(const struct config *cfg)
{
	return cfg->memory_store ? NULL : cfg->cache_dir ? cfg->cache_dir : DEFAULT_CACHE_DIR;
}

/* pipe:PATH made absolute (from @cwd); malloc'ed, NULL without memory. */
static char *pipe_path(const char *arg, const char *cwd)
{
	char *abs;
	if (arg[0] == '/' || !cwd)
		return strdup(arg);
	return asprintf(&abs, "%s/%s", cwd, arg) < 0 ? NULL : abs;
}

int files_check_pipe_path(const struct file_spec *f, const char *cwd, const char *mnt, bool resolve,
                          char *err, size_t errlen)
{
	if (f->kind != SOURCE_PIPE || !mnt)
		return 0;
	char *abs = pipe_path(f->arg, cwd);
	if (!abs) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	bool inside = source_path_inside(abs, mnt, resolve);
	free(abs);
	if (!inside)
		return 0;
	snprintf(err, errlen, "pipe path '%s' for '%s' is inside the mount point '%s'", f->arg,
	         f->name, mnt);
	return -1;
}

/* The URL source's options: a view of @o (nothing copied, nothing to
 * free; the source copies what it keeps). */
static struct url_opts url_opts_of(const struct file_opts *o)
{
	return (struct url_opts){
	    .headers = o->headers.ptr,
	    .nheaders = o->headers.len,
	    .userpwd = o->userpwd,
	    .netrc = o->netrc,
	    .netrc_file = o->netrc_file,
	    .insecure = o->insecure,
	    .location_trusted = o->location_trusted,
	    .ondemand = o->fill == FILL_ONDEMAND,
	    .retries = o->retries,
	    .retry_time = o->retry_time,
	    .stall_timeout = o->stall_timeout,
	    .connect_timeout = o->connect_timeout,
	    .max_redirs = o->max_redirs,
	    .proxy = o->proxy,
	    .noproxy = o->noproxy,
	};
}

/*
 * --persist: the persistent cache's entry of an http(s) URL, claimed for
 * @f's stream, or NULL (no --persist, another scheme, or another file of
 * this mount has the same resource: an ordinary store then). The key is
 * the URL and everything of the request that can change the response:
 * headers and credentials, hashed, never stored.
 */
static struct persist_entry *persist_entry_of(const struct files_env *env,
                                              const struct file_spec *f)
{
	if (!env->persist || f->kind != SOURCE_URL || strncasecmp(f->arg, "http", 4) != 0)
		return NULL;
	const struct file_opts *o = &f->opts;
	size_t n = 0;
	const char **parts = calloc(o->headers.len + 6, sizeof(*parts));
	if (!parts)
		return NULL;
	parts[n++] = f->arg;
	for (size_t i = 0; i < o->headers.len; i++)
		parts[n++] = o->headers.ptr[i];
	parts[n++] = o->userpwd;
	parts[n++] = o->netrc ? "netrc" : "";
	parts[n++] = o->netrc_file;
	uint8_t key[PERSIST_KEY_LEN];
	persist_key(parts, n, key);
	free(parts);
	struct persist_entry *e = persist_claim(env->persist, key);
	if (!e && errno == EBUSY)
		log_info("%s: another file of this mount keeps the same resource in the persistent "
		         "cache: this one is not kept",
		         f->name);
	return e;
}

/* The stream of @f, with a source of its kind. */
static struct stream *make_stream(const struct files_env *env, const struct file_spec *f,
                                  int stdin_fd, char *err, size_t errlen)
{
	struct persist_entry *pe = persist_entry_of(env, f);
	struct store *st = pe ? persist_store(pe) : store_new(files_store_dir(env->cfg), f->name);
	if (!st) {
		snprintf(err, errlen, "'%s': %s", f->name, strerror(errno));
		return NULL;
	}
	struct stream *s = NULL;
	char *abs = NULL;
	struct url_opts uo;
	struct s3_opts so;
	switch (f->kind) {
	case SOURCE_CMD:
		s = source_cmd_new(env->loop, f->name, f->arg, env->cwd, st);
		break;
	case SOURCE_PIPE:
		abs = pipe_path(f->arg, env->cwd);
		s = source_pipe_new(env->loop, f->name, abs ? abs : f->arg, env->mnt, st);
		free(abs);
		break;
	case SOURCE_STDIN:
		s = source_stdin_new(env->loop, f->name, stdin_fd, st);
		break;
	case SOURCE_URL:
		uo = url_opts_of(&f->opts);
		uo.persist = pe;
		s = source_url_new(env->loop, f->name, f->arg, &uo, st);
		if (s && pe)
			persist_attach(pe, s);
		break;
	case SOURCE_S3:
		uo = url_opts_of(&f->opts);
		so = (struct s3_opts){.region = f->opts.region,
		                      .endpoint_url = f->opts.endpoint_url,
		                      .profile = f->opts.profile,
		                      .force_path_style = f->opts.force_path_style,
		                      .no_sign_request = f->opts.no_sign_request};
		s = source_s3_new(env->loop, f->name, f->arg, &so, &uo, st, err, errlen);
		if (!s) {
			char why[256];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, errlen, "'%s': %s", f->name, why);
			return NULL;
		}
		break;
	}
	if (!s) {
		snprintf(err, errlen, "'%s': %s", f->name, strerror(errno));
		return NULL;
	}
	if (f->opts.size == SIZE_FIXED)
		stream_set_length(s, f->opts.size_bytes);
	if (f->opts.keep)
		stream_set_keep(s, f->opts.keep);
	stream_set_cache(s, env->cache);
	return s;
}

int files_add(const struct files_env *env, const struct file_spec *f, int stdin_fd, bool mounted,
              char *err, size_t errlen)
{
	struct stream *s = make_stream(env, f, stdin_fd, err, errlen);
	if (!s)
		return -1;
	/* The mount's --size-unknown=wait, for a file that did not choose
	 * its own size (also one added later: it is the mount's default).
	 * The tree reads only the policies: a shallow copy is enough. */
	struct file_opts opts = f->opts;
	if (!opts.size_given && env->cfg->size_unknown_wait)
		opts.size = SIZE_WAIT_UNKNOWN;
	/* Status and the log show URLs without their credentials. */
	char *shown = f->kind == SOURCE_URL ? source_url_redact(f->source) : NULL;
	const char *src = f->kind != SOURCE_URL ? f->source : shown ? shown : "(URL)";
	stream_ref(s); /* ours, for the start below: the tree takes the other */
	int r = fs_add_file(env->fs, f->name, s, &opts, src, err, errlen);
	if (r == 0 && mounted) {
		log_info("control: add %s=%s", f->name, src);
		if (f->opts.start == START_MOUNT)
			stream_start(s);
	}
	free(shown);
	stream_unref(s);
	return r;
}

/* "NAME=SOURCE" and its "OPTION=VALUE"s (a leading "--" allowed) into @f,
 * which the caller frees on success. Returns 0 or -1 with @err set. */
static int parse_add(const char *spec, char *const *opts, size_t nopts, struct file_spec *f,
                     char *err, size_t errlen)
{
	struct file_opts def;
	config_file_opts_default(&def);
	int r = config_parse_file(spec, &def, f, err, errlen);
	config_file_opts_free(&def);
	if (r < 0)
		return -1;
	for (size_t i = 0; i < nopts && r == 0; i++) {
		char *kv = strdup(opts[i]);
		if (!kv) {
			snprintf(err, errlen, "out of memory");
			r = -1;
			break;
		}
		char *key = kv + (strncmp(kv, "--", 2) == 0 ? 2 : 0);
		char *eq = strchr(key, '=');
		if (eq)
			*eq = '\0';
		r = config_set_file_option(&f->opts, key, eq ? eq + 1 : NULL, err, errlen);
		free(kv);
	}
	if (r == 0 && f->kind == SOURCE_STDIN) {
		snprintf(err, errlen, "standard input can only be given when mounting");
		r = -1;
	}
	if (r < 0)
		config_file_spec_free(f);
	return r;
}

int files_live_add(void *ctx, const char *spec, char *const *opts, size_t nopts, char *err,
                   size_t errlen)
{
	const struct files_env *env = ctx;
	struct file_spec f;
	if (parse_add(spec, opts, nopts, &f, err, errlen) < 0)
		return -1;
	int r = files_check_pipe_path(&f, env->cwd, env->mnt, false, err, errlen);
	if (r == 0)
		r = files_add(env, &f, -1, true, err, errlen);
	config_file_spec_free(&f);
	return r;
}

int files_live_rm(void *ctx, const char *name, char *err, size_t errlen)
{
	const struct files_env *env = ctx;
	return fs_remove(env->fs, name, err, errlen);
}
