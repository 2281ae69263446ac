/*
 * main.c - the streamfs command: mount (the default), status, add, rm.
 *
 * Mounting, in order: parse and check everything (bad input exits 2 with
 * one line, before anything is mounted); create the streams (nothing
 * runs yet); mount; daemonize (the parent exits 0 only once the mount is
 * there); start the I/O thread and the start=mount streams; serve until
 * unmounted or signalled; then wake every waiter, stop every source, kill
 * every command group, unmount.
 */
#define FUSE_USE_VERSION 312

#include "config.h"
#include "control.h"
#include "fs.h"
#include "streamfs/ioloop.h"
#include "log.h"
#include "streamfs/source.h"
#include "status.h"
#include "streamfs/cache.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_CACHE_DIR "/var/tmp"

static const char usage[] =
	"usage: streamfs [OPTIONS] MOUNTPOINT [NAME=SOURCE]...\n"
	"       streamfs status [--json] [--watch] MOUNTPOINT\n"
	"       streamfs add MOUNTPOINT NAME=SOURCE [OPTION=VALUE...]\n"
	"       streamfs rm MOUNTPOINT NAME\n"
	"\n"
	"Mount streams as ordinary read-only, seekable files. SOURCE is one of:\n"
	"  cmd:COMMAND        standard output of /bin/sh -c COMMAND\n"
	"  pipe:PATH          a FIFO (or any file), read sequentially\n"
	"  -                  streamfs's own standard input\n"
	"  http://... https://... ftp://... ftps://...   a URL\n"
	"NAME may contain '/' to make subdirectories.\n"
	"\n"
	"Options:\n"
	"  -f, --foreground       stay in the foreground (default: daemonize once mounted)\n"
	"  -c, --config FILE      manifest: one [NAME] section per file, with source= and options\n"
	"  -o OPT[,OPT...]        FUSE mount options (allow_other, ...)\n"
	"      --cache-dir DIR    keep stream bytes in unlinked files in DIR (default " DEFAULT_CACHE_DIR
	")\n"
	"      --cache-dir=memory keep them in RAM instead\n"
	"      --cache-size=BYTES at most BYTES in the store for all files (default: no limit)\n"
	"      --cache-min-free=BYTES|N%  keep free on the cache file system (default 5%)\n"
	"  -v, --verbose          debug log output\n"
	"  -q, --quiet            errors only\n"
	"      --version          print the version\n"
	"  -h, --help             this text\n"
	"\n"
	"Per-file options (for every NAME=SOURCE on the command line):\n"
	"  --size=auto|wait|BYTES what stat shows while a stream runs (default auto)\n"
	"  --start=access|mount   start on first open/stat (default) or at mount\n"
	"  --read=full|partial    reads wait for the whole range (default) or return what is there\n"
	"  --fill=all|ondemand    URLs: download everything (default) or only what is read\n"
	"  --keep=BYTES           keep only the last BYTES received (endless streams)\n"
	"  URL options: --header='N: v', --user=U:P, --insecure, --retries=N, --retry-time=S,\n"
	"               --stall-timeout=S, --connect-timeout=S, --max-redirs=N, --location-trusted,\n"
	"               --netrc, --netrc-file=FILE\n"
	"  Secrets: --user=@FILE and --header=@FILE read them from FILE (mode 0600), so they\n"
	"  never show in ps; see 'Passing secrets' in streamfs(1).\n"
	"\n"
	"Unmount with 'fusermount3 -u MOUNTPOINT', or SIGINT/SIGTERM to the daemon.\n"
	"Status: 'streamfs status MOUNTPOINT', or getfattr -d MOUNTPOINT/NAME.\n";

/* One line on stderr; returns the exit code for bad input. */
__attribute__((format(printf, 1, 2))) static int die_usage(const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "streamfs: %s\n", msg);
	return 2;
}

/* Is @path already the mount point of a FUSE file system? */
static bool fuse_mounted_at(const char *path)
{
	char real[PATH_MAX];
	if (!realpath(path, real))
		return false;
	FILE *f = fopen("/proc/self/mounts", "re");
	if (!f)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		char dev[1024], dir[PATH_MAX], type[256];
		if (sscanf(line, "%1023s %4095s %255s", dev, dir, type) != 3)
			continue;
		/* /proc/mounts escapes blanks as \040; compare only what can match. */
		found = strcmp(dir, real) == 0 && strncmp(type, "fuse", 4) == 0;
	}
	fclose(f);
	return found;
}

/*
 * Keep stdin for a "-" source across daemonizing: a new open file
 * description of the same pipe/FIFO/tty through /proc (so O_NONBLOCK does
 * not leak to whoever else shares ours), or a plain duplicate.
 */
static int save_stdin(void)
{
	int fd = open("/proc/self/fd/0", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
	return fd;
}

/*
 * Every started stream holds a store descriptor, and a running command a
 * few more: take the soft limit as far as the hard one allows. Commands
 * get the original back (source_cmd_set_nofile()).
 */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	source_cmd_set_nofile(&rl);
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static const char *store_dir(const struct config *cfg)
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

/*
 * Refuse a pipe: path that leads into the mount (@mnt, canonical): the
 * daemon would open its own files and wait on itself. With @resolve,
 * symlinks are followed (before mounting); without, by name only (add, on
 * the loop thread, must not touch the file system). Returns 0 or -1 with
 * @err set.
 */
static int check_pipe_path(const struct file_spec *f, const char *cwd, const char *mnt,
			   bool resolve, char *err, size_t errlen)
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

/* What can only be checked on the file system, before mounting. Returns 0
 * or -1 with @err set. */
static int check_before_mount(const struct config *cfg, const char *cwd, const char *mnt,
			      char *err, size_t errlen)
{
	/* Stores are created when their streams start: check the place now,
	 * so a bad one is one line at mount time, not a failure per file. */
	struct store *probe = store_open(store_dir(cfg), "streamfs");
	if (!probe) {
		snprintf(err, errlen, "cannot create a store in '%s': %s",
			 cfg->memory_store ? "memory" : store_dir(cfg), strerror(errno));
		return -1;
	}
	store_close(probe);
	for (size_t i = 0; i < cfg->nfiles; i++)
		if (check_pipe_path(&cfg->files[i], cwd, mnt, true, err, errlen) < 0)
			return -1;
	return 0;
}

/* The stream of @f. Its store is created when it starts. */
static struct stream *make_stream(const struct config *cfg, const struct file_spec *f,
				  struct ioloop *loop, struct cache *ca, const char *cwd,
				  const char *mnt, int stdin_fd, char *err, size_t errlen)
{
	struct store *st = store_new(store_dir(cfg), f->name);
	if (!st) {
		snprintf(err, errlen, "'%s': %s", f->name, strerror(errno));
		return NULL;
	}
	struct stream *s = NULL;
	char *abs = NULL;
	switch (f->kind) {
	case SOURCE_CMD:
		s = source_cmd_new(loop, f->name, f->arg, cwd, st);
		break;
	case SOURCE_PIPE:
		abs = pipe_path(f->arg, cwd);
		s = source_pipe_new(loop, f->name, abs ? abs : f->arg, mnt, st);
		free(abs);
		break;
	case SOURCE_STDIN:
		s = source_stdin_new(loop, f->name, stdin_fd, st);
		break;
	case SOURCE_URL:
		s = source_url_new(loop, f->name, f->arg, &f->opts, st);
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
	stream_set_cache(s, ca);
	return s;
}

/* What "streamfs add" and "streamfs rm" reach, in the loop thread. */
struct live {
	const struct config *cfg;
	struct ioloop *loop;
	struct cache *cache;
	struct fs *fs;
	const char *cwd;
	const char *mnt; /* the mount point, canonical */
};

static int live_add(void *ctx, const char *spec, char *const *opts, size_t nopts, char *err,
		    size_t errlen)
{
	struct live *lv = ctx;
	struct file_opts def;
	struct file_spec f;
	config_file_opts_default(&def);
	int r = config_parse_file(spec, &def, &f, err, errlen);
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
		r = config_set_file_option(&f.opts, key, eq ? eq + 1 : NULL, err, errlen);
		free(kv);
	}
	if (r == 0 && f.kind == SOURCE_STDIN) {
		snprintf(err, errlen, "standard input can only be given when mounting");
		r = -1;
	}
	if (r == 0)
		r = check_pipe_path(&f, lv->cwd, lv->mnt, false, err, errlen);
	struct stream *s = NULL;
	if (r == 0 && !(s = make_stream(lv->cfg, &f, lv->loop, lv->cache, lv->cwd, lv->mnt, -1,
					err, errlen)))
		r = -1;
	if (r == 0) {
		/* Status and the log show URLs without their credentials. */
		char *shown = f.kind == SOURCE_URL ? source_url_redact(f.source) : NULL;
		const char *src = f.kind != SOURCE_URL ? f.source : shown ? shown : "(URL)";
		stream_ref(s);
		r = fs_add_file(lv->fs, f.name, s, &f.opts, src, err, errlen);
		if (r == 0)
			log_info("control: add %s=%s", f.name, src);
		free(shown);
		if (r == 0 && f.opts.start == START_MOUNT)
			stream_start(s);
		stream_unref(s);
	}
	config_file_spec_free(&f);
	return r;
}

static int live_rm(void *ctx, const char *name, char *err, size_t errlen)
{
	struct live *lv = ctx;
	return fs_remove(lv->fs, name, err, errlen);
}

static int mount_main(int argc, char **argv)
{
	struct config cfg;
	char err[1024];
	int rc = 1;
	struct ioloop *loop = NULL;
	struct fs *fs = NULL;
	struct control *ctl = NULL;
	struct cache *cache = NULL;
	int stdin_fd = -1;
	char cwd[PATH_MAX], mnt[PATH_MAX];

	memset(&cfg, 0, sizeof(cfg));
	if (config_parse_args(&cfg, argc, argv, err, sizeof(err)) < 0) {
		rc = die_usage("%s", err);
		goto out;
	}
	if (cfg.show_help) {
		fputs(usage, stdout);
		rc = 0;
		goto out;
	}
	if (cfg.show_version) {
		printf("streamfs %s\n", STREAMFS_VERSION);
		rc = 0;
		goto out;
	}
	log_set_level(cfg.verbosity < 0 ? LOG_LVL_ERROR
		      : cfg.verbosity == 0 ? LOG_LVL_INFO
					 : LOG_LVL_DEBUG);

	struct stat sb;
	if (stat(cfg.mountpoint, &sb) < 0) {
		rc = die_usage("mountpoint '%s': %s", cfg.mountpoint, strerror(errno));
		goto out;
	}
	if (!S_ISDIR(sb.st_mode)) {
		rc = die_usage("mountpoint '%s': %s", cfg.mountpoint, "not a directory");
		goto out;
	}
	if (fuse_mounted_at(cfg.mountpoint)) {
		rc = die_usage("mountpoint '%s': %s", cfg.mountpoint,
			       "a FUSE file system is already mounted there");
		goto out;
	}
	if (!getcwd(cwd, sizeof(cwd)))
		strcpy(cwd, "/");
	if (!realpath(cfg.mountpoint, mnt)) {
		rc = die_usage("mountpoint '%s': %s", cfg.mountpoint, strerror(errno));
		goto out;
	}
	/* The daemon works from "/": files added later must find the store. */
	if (cfg.cache_dir && cfg.cache_dir[0] != '/') {
		char *abs = realpath(cfg.cache_dir, NULL);
		if (!abs) {
			rc = die_usage("cache directory '%s': %s", cfg.cache_dir, strerror(errno));
			goto out;
		}
		free(cfg.cache_dir);
		cfg.cache_dir = abs;
	}
	if (check_before_mount(&cfg, cwd, mnt, err, sizeof(err)) < 0) {
		rc = die_usage("%s", err);
		goto out;
	}
	raise_fd_limit();
	/* Commands are waited for: a SIGCHLD ignored by whoever started us
	 * would have the kernel reap them first, and no stream would end. */
	signal(SIGCHLD, SIG_DFL);
	for (size_t i = 0; i < cfg.nfiles; i++) {
		if (cfg.files[i].kind == SOURCE_STDIN && (stdin_fd = save_stdin()) < 0) {
			rc = die_usage("cannot keep standard input: %s", strerror(errno));
			goto out;
		}
	}

	if (source_url_global_init() < 0) {
		rc = die_usage("cannot initialise libcurl");
		goto out;
	}
	loop = ioloop_new();
	fs = fs_new();
	cache = cache_new(store_dir(&cfg), cfg.cache_size, cfg.cache_min_free,
			  cfg.cache_min_free_pct);
	if (!loop || !fs || !cache) {
		rc = die_usage("out of memory");
		goto out;
	}
	for (size_t i = 0; i < cfg.nfiles; i++) {
		struct file_spec *f = &cfg.files[i];
		/* Standard input is read from mount time on, whatever --start
		 * says: its writer cannot wait for a reader, and nothing can ask
		 * for its bytes again later. */
		if (f->kind == SOURCE_STDIN)
			f->opts.start = START_MOUNT;
		if (cfg.cache_size && f->opts.keep && f->opts.keep + 2 * CACHE_BLOCK > cfg.cache_size)
			log_warn("%s: keep=%llu does not fit in --cache-size with room to fill: "
				 "it will pause when the budget is full",
				 f->name, (unsigned long long)f->opts.keep);
		struct stream *s =
			make_stream(&cfg, f, loop, cache, cwd, mnt, stdin_fd, err, sizeof(err));
		if (f->kind == SOURCE_STDIN)
			stdin_fd = -1; /* the stream owns it now, even on failure */
		/* Status shows URLs without their credentials. */
		char *shown = f->kind == SOURCE_URL ? source_url_redact(f->source) : NULL;
		const char *src = f->kind != SOURCE_URL ? f->source : shown ? shown : "(URL)";
		int r = s ? fs_add_file(fs, f->name, s, &f->opts, src, err, sizeof(err)) : -1;
		free(shown);
		if (r < 0) {
			rc = die_usage("%s", err);
			goto out;
		}
	}
	fs_set_cache(fs, cache);
	if (fs_mount(fs, cfg.mountpoint, cfg.fuse_opts, err, sizeof(err)) < 0) {
		rc = die_usage("%s", err);
		goto out;
	}

	/* Fork now, before any thread exists. The parent returns once the
	 * child is set up; the mount is already in place. */
	if (!cfg.foreground) {
		if (fuse_daemonize(0) != 0) {
			fs_shutdown(fs);
			goto out;
		}
		log_use_syslog(true);
	}
	/* A store past RLIMIT_FSIZE must fail with EFBIG (that read, or the
	 * stream at that byte), not kill the daemon with SIGXFSZ. Before any
	 * thread writes to a store. */
	signal(SIGXFSZ, SIG_IGN);
	if (ioloop_start(loop) < 0) {
		log_error("cannot start the I/O thread");
		fs_shutdown(fs);
		goto out;
	}
	if (cache_start_poll(cache, loop) < 0)
		log_warn("cannot watch the cache for free space");
	struct live lv = {
		.cfg = &cfg, .loop = loop, .cache = cache, .fs = fs, .cwd = cwd, .mnt = mnt};
	struct control_ops cops = {.add = live_add, .rm = live_rm, .ctx = &lv};
	char ctlname[108];
	ctl = control_open(loop, &cops, ctlname, sizeof(ctlname));
	if (ctl && ioloop_call(loop, control_start, ctl) == 0)
		fs_set_control_name(fs, ctlname);
	else
		log_warn("no control socket (add/rm unavailable): %s", strerror(errno));
	log_info("mounted %zu file%s on %s", cfg.nfiles, cfg.nfiles == 1 ? "" : "s",
		 cfg.mountpoint);
	fs_start_mount_streams(fs);
	fs_loop(fs);
	log_info("unmounting %s", cfg.mountpoint);
	fs_shutdown(fs);
	rc = 0;
out:
	if (loop)
		ioloop_stop(loop);
	control_close(ctl);
	fs_free(fs);
	ioloop_free(loop);
	cache_free(cache); /* after the streams: they detach from it */
	if (stdin_fd >= 0)
		close(stdin_fd);
	config_free(&cfg);
	source_url_global_cleanup();
	return rc;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "status") == 0)
		return status_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "add") == 0) {
		if (argc < 4 || strchr(argv[3], '=') == NULL) {
			fprintf(stderr, "streamfs: usage: streamfs add MOUNTPOINT NAME=SOURCE "
					"[OPTION=VALUE...]\n");
			return 2;
		}
		char **f, err[1024];
		size_t n;
		/* Reads user=@FILE and header=@FILE, and wipes the secrets
		 * from our own argv (ps shows it to every local user). */
		if (config_add_request(argc - 3, argv + 3, &f, &n, err, sizeof(err)) < 0) {
			fprintf(stderr, "streamfs: %s\n", err);
			return 2;
		}
		int rc = n <= 256 ? control_client(argv[2], (const char *const *)f, n) : 2;
		if (n > 256)
			fprintf(stderr, "streamfs: too many options (at most 255)\n");
		config_strv_free(f);
		return rc;
	}
	if (argc > 1 && strcmp(argv[1], "rm") == 0) {
		if (argc != 4) {
			fprintf(stderr, "streamfs: usage: streamfs rm MOUNTPOINT NAME\n");
			return 2;
		}
		const char *f[2] = {"rm", argv[3]};
		return control_client(argv[2], f, 2);
	}
	return mount_main(argc, argv);
}
