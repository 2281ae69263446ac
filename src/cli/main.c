/*
 * main.c - the streamfs command: mount (the default), status, add, rm.
 *
 * Mounting, in order: parse and check everything (bad input exits 2 with
 * one line, before anything is mounted); create the streams (nothing
 * runs yet); mount; daemonize (the parent exits 0 only once the mount is
 * there); start the I/O thread and the start=mount streams; serve until
 * unmounted or signalled; then stop (stop_all()).
 */
#define FUSE_USE_VERSION 312

#include "config.h"
#include "control.h"
#include "files.h"
#include "fs.h"
#include "streamfs/ioloop.h"
#include "log.h"
#include "streamfs/source.h"
#include "status.h"
#include "streamfs/cache.h"
#include "streamfs/persist.h"
#include "streamfs/store.h"
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <mntent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: streamfs [OPTIONS] MOUNTPOINT [NAME=SOURCE]...\n"
    "       streamfs status [--json] [--watch] MOUNTPOINT\n"
    "       streamfs add MOUNTPOINT NAME=SOURCE [OPTION=VALUE...]\n"
    "       streamfs rm MOUNTPOINT NAME\n"
    "       streamfs wait [--timeout SECONDS] MOUNTPOINT NAME...\n"
    "\n"
    "Mount streams as ordinary read-only, seekable files. SOURCE is one of:\n"
    "  cmd:COMMAND        standard output of /bin/sh -c COMMAND\n"
    "  pipe:PATH          a FIFO (or any file), read sequentially\n"
    "  -                  streamfs's own standard input\n"
    "  http://... https://... ftp://... ftps://...   a URL\n"
    "  s3://BUCKET/KEY    an S3 object, signed with the AWS CLI's credentials\n"
    "NAME may contain '/' to make subdirectories.\n"
    "\n"
    "Options:\n"
    "  -f, --foreground       stay in the foreground (default: daemonize once mounted)\n"
    "  -c, --config FILE      manifest: one [NAME] section per file, with source= and options\n"
    "  -o OPT[,OPT...]        FUSE mount options (allow_other, ...)\n"
    "      --cache-dir DIR    keep stream bytes in unlinked files in DIR "
    "(default " DEFAULT_CACHE_DIR ")\n"
    "      --cache-dir=memory keep them in RAM instead\n"
    "      --size-unknown=auto|wait  files without --size: while a stream with no\n"
    "                         announced length runs, stat shows the bytes so far\n"
    "                         (default) or waits for the end (whole sendfile copies)\n"
    "      --cache-size=BYTES at most BYTES in the store for all files (default: no limit)\n"
    "      --cache-min-free=BYTES|N%  keep free on the cache file system (default 5%)\n"
    "      --persist          URLs keep their bytes in --cache-dir DIR across mounts\n"
    "                         (revalidated with the server before use)\n"
    "  -v, --verbose          debug log output (-vv: and libcurl's, credentials redacted)\n"
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
    "               --netrc, --netrc-file=FILE, --proxy=URL, --noproxy=LIST\n"
    "  S3 options:  --region=REGION, --endpoint-url=URL, --profile=NAME, --force-path-style,\n"
    "               --no-sign-request (public objects)\n"
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

/*
 * Is @path already the mount point of a FUSE file system? getmntent_r()
 * decodes the octal escapes of the mount table (a blank in a mount
 * point's name is written \040 there).
 */
static bool fuse_mounted_at(const char *path)
{
	char real[PATH_MAX];
	if (!realpath(path, real))
		return false;
	FILE *f = setmntent("/proc/self/mounts", "re");
	if (!f)
		return false;
	struct mntent ent;
	char buf[4 * PATH_MAX + 1024]; /* a mount point, each byte escaped, and the rest */
	bool found = false;
	while (!found && getmntent_r(f, &ent, buf, sizeof(buf)))
		found = strcmp(ent.mnt_dir, real) == 0 && strncmp(ent.mnt_type, "fuse", 4) == 0;
	endmntent(f);
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

/* What can only be checked on the file system, before mounting. Returns 0
 * or -1 with @err set. */
static int check_before_mount(const struct config *cfg, const char *cwd, const char *mnt, char *err,
                              size_t errlen)
{
	/* Stores are created when their streams start: check the place now,
	 * so a bad one is one line at mount time, not a failure per file. */
	struct store *probe = store_open(files_store_dir(cfg), "streamfs");
	if (!probe) {
		snprintf(err, errlen, "cannot create a store in '%s': %s",
		         cfg->memory_store ? "memory" : files_store_dir(cfg), strerror(errno));
		return -1;
	}
	store_close(probe);
	for (size_t i = 0; i < cfg->files.len; i++)
		if (files_check_pipe_path(&cfg->files.ptr[i], cwd, mnt, true, err, errlen) < 0)
			return -1;
	return 0;
}

/* A mount being set up, served and torn down: what mount_main()'s steps share. */
struct mount {
	struct config cfg;
	char cwd[PATH_MAX]; /* where streamfs was started: commands run there */
	char mnt[PATH_MAX]; /* the mount point, canonical */
	int stdin_fd;       /* kept for a "-" source until its stream owns it */
	struct ioloop *loop;
	struct fs *fs;
	struct cache *cache;
	struct persist *persist; /* --persist, or NULL */
	struct control *ctl;
	struct files_env env; /* what every file shares; the control socket reaches it */
	char err[1024];
};

/*
 * The steps of mount_main() return 0 to go on, or the exit code once they
 * have said why on stderr (2 for anything before the mount exists).
 */

/* The mount point: an existing directory, with no FUSE file system on it. */
static int check_mountpoint(struct mount *m)
{
	const char *mp = m->cfg.mountpoint;
	struct stat sb;
	if (stat(mp, &sb) < 0)
		return die_usage("mountpoint '%s': %s", mp, strerror(errno));
	if (!S_ISDIR(sb.st_mode))
		return die_usage("mountpoint '%s': %s", mp, "not a directory");
	if (fuse_mounted_at(mp))
		return die_usage("mountpoint '%s': %s", mp,
		                 "a FUSE file system is already mounted there");
	if (!realpath(mp, m->mnt))
		return die_usage("mountpoint '%s': %s", mp, strerror(errno));
	return 0;
}

/* Everything outside the mount the files will need, checked and set up
 * while errors can still be one line and exit 2. */
static int prepare(struct mount *m)
{
	struct config *cfg = &m->cfg;
	log_set_level(cfg->verbosity < 0    ? LOG_LVL_ERROR
	              : cfg->verbosity == 0 ? LOG_LVL_INFO
	                                    : LOG_LVL_DEBUG);
	/* -vv: libcurl's own account of every request, too. */
	source_url_set_verbose(cfg->verbosity >= 2);
	int rc = check_mountpoint(m);
	if (rc)
		return rc;
	if (!getcwd(m->cwd, sizeof(m->cwd)))
		strcpy(m->cwd, "/");
	/* The daemon works from "/": files added later must find the store. */
	if (cfg->cache_dir && cfg->cache_dir[0] != '/') {
		char *abs = realpath(cfg->cache_dir, NULL);
		if (!abs)
			return die_usage("cache directory '%s': %s", cfg->cache_dir,
			                 strerror(errno));
		free(cfg->cache_dir);
		cfg->cache_dir = abs;
	}
	if (check_before_mount(cfg, m->cwd, m->mnt, m->err, sizeof(m->err)) < 0)
		return die_usage("%s", m->err);
	/* Locked now, so a second mount of the same directory is refused
	 * while it can still say so; the lock survives daemonizing. */
	if (cfg->persist &&
	    !(m->persist = persist_open(cfg->cache_dir, cfg->cache_size, m->err, sizeof(m->err))))
		return die_usage("%s", m->err);
	raise_fd_limit();
	/* Commands are waited for: a SIGCHLD ignored by whoever started us
	 * would have the kernel reap them first, and no stream would end. */
	signal(SIGCHLD, SIG_DFL);
	for (size_t i = 0; i < cfg->files.len; i++) {
		if (cfg->files.ptr[i].kind == SOURCE_STDIN && (m->stdin_fd = save_stdin()) < 0)
			return die_usage("cannot keep standard input: %s", strerror(errno));
	}
	return 0;
}

/* The I/O loop, the file system and a stream per file; nothing runs yet. */
static int create_files(struct mount *m)
{
	if (source_url_global_init() < 0)
		return die_usage("cannot initialise libcurl");
	const struct config *cfg = &m->cfg;
	m->loop = ioloop_new();
	m->fs = fs_new();
	m->cache = cache_new(files_store_dir(cfg), cfg->cache_size, cfg->cache_min_free,
	                     cfg->cache_min_free_pct);
	if (!m->loop || !m->fs || !m->cache)
		return die_usage("out of memory");
	fs_set_cache(m->fs, m->cache);
	m->env = (struct files_env){.cfg = cfg,
	                            .loop = m->loop,
	                            .fs = m->fs,
	                            .cache = m->cache,
	                            .persist = m->persist,
	                            .cwd = m->cwd,
	                            .mnt = m->mnt};
	for (size_t i = 0; i < m->cfg.files.len; i++) {
		struct file_spec *f = &m->cfg.files.ptr[i];
		/* Standard input is read from mount time on, whatever --start
		 * says: its writer cannot wait for a reader, and nothing can ask
		 * for its bytes again later. */
		if (f->kind == SOURCE_STDIN)
			f->opts.start = START_MOUNT;
		if (cfg->cache_size && f->opts.keep &&
		    f->opts.keep + 2 * CACHE_BLOCK > cfg->cache_size)
			log_warn("%s: keep=%llu does not fit in --cache-size with room to fill: "
			         "it will pause when the budget is full",
			         f->name, (unsigned long long)f->opts.keep);
		int r = files_add(&m->env, f, m->stdin_fd, false, m->err, sizeof(m->err));
		if (f->kind == SOURCE_STDIN)
			m->stdin_fd = -1; /* the stream owns it now, even on failure */
		if (r < 0)
			return die_usage("%s", m->err);
	}
	return 0;
}

/* The control socket behind "streamfs add" and "streamfs rm"; the mount
 * works without it. */
static void open_control(struct mount *m)
{
	char name[108];
	struct control_ops ops = {.add = files_live_add, .rm = files_live_rm, .ctx = &m->env};
	m->ctl = control_open(m->loop, &ops, name, sizeof(name));
	if (m->ctl && ioloop_call(m->loop, control_start, m->ctl) == 0)
		fs_set_control_name(m->fs, name);
	else
		log_warn("no control socket (add/rm unavailable): %s", strerror(errno));
}

/*
 * The shutdown sequence: the tree takes no more files, every parked
 * request is answered (EIO) and the mount goes; then every stream is
 * cancelled, every command process group killed, and the sources are
 * given 5 s to let go. Before the I/O thread stops: sources finish there.
 */
static void stop_all(struct fs *fs)
{
	fs_shutdown(fs);
	struct stream **v = fs_streams(fs);
	if (!sources_shutdown(v, "streamfs is shutting down", 5000))
		log_warn("some sources did not stop within 5 s");
	fs_streams_free(v);
}

/* Mount, detach (unless -f), serve until unmounted or signalled, shut
 * down. Returns the exit code: 0 once served. */
static int serve(struct mount *m)
{
	if (fs_mount(m->fs, m->cfg.mountpoint, m->cfg.fuse_opts.ptr, m->err, sizeof(m->err)) < 0)
		return die_usage("%s", m->err);
	/* Fork now, before any thread exists. The parent returns once the
	 * child is set up; the mount is already in place. */
	if (!m->cfg.foreground) {
		if (fuse_daemonize(0) != 0) {
			stop_all(m->fs);
			return 1;
		}
		log_use_syslog(true);
	}
	/* A store past RLIMIT_FSIZE must fail with EFBIG (that read, or the
	 * stream at that byte), not kill the daemon with SIGXFSZ. Before any
	 * thread writes to a store. */
	signal(SIGXFSZ, SIG_IGN);
	if (ioloop_start(m->loop) < 0) {
		log_error("cannot start the I/O thread");
		stop_all(m->fs);
		return 1;
	}
	if (cache_start_poll(m->cache, m->loop) < 0)
		log_warn("cannot watch the cache for free space");
	if (m->persist && persist_start(m->persist) < 0)
		log_warn("persist: no sync thread: maps are written at unmount only");
	open_control(m);
	log_info("mounted %zu file%s on %s", m->cfg.files.len, m->cfg.files.len == 1 ? "" : "s",
	         m->cfg.mountpoint);
	fs_start_mount_streams(m->fs);
	fs_loop(m->fs);
	log_info("unmounting %s", m->cfg.mountpoint);
	stop_all(m->fs);
	return 0;
}

/* Stop the loop (every source with it), free everything. */
static void teardown(struct mount *m)
{
	if (m->loop)
		ioloop_stop(m->loop);
	control_close(m->ctl);
	persist_close(m->persist); /* the last maps; before the streams go */
	fs_free(m->fs);
	ioloop_free(m->loop);
	cache_free(m->cache); /* after the streams: they detach from it */
	if (m->stdin_fd >= 0)
		close(m->stdin_fd);
	config_free(&m->cfg);
	source_url_global_cleanup();
}

/* The steps in the order the comment at the top of this file gives. */
static int mount_main(int argc, char **argv)
{
	struct mount m = {.stdin_fd = -1};
	int rc = 0;
	if (config_parse_args(&m.cfg, argc, argv, m.err, sizeof(m.err)) < 0)
		rc = die_usage("%s", m.err);
	else if (m.cfg.show_help)
		fputs(usage, stdout);
	else if (m.cfg.show_version)
		printf("streamfs %s\n", STREAMFS_VERSION);
	else if ((rc = prepare(&m)) == 0 && (rc = create_files(&m)) == 0)
		rc = serve(&m);
	teardown(&m);
	return rc;
}

/* streamfs add MOUNTPOINT NAME=SOURCE [OPTION=VALUE...]; argv[0] is "add". */
static int add_main(int argc, char **argv)
{
	if (argc < 3 || strchr(argv[2], '=') == NULL)
		return die_usage("usage: streamfs add MOUNTPOINT NAME=SOURCE [OPTION=VALUE...]");
	char **f, err[1024];
	size_t n;
	/* Reads user=@FILE and header=@FILE, and wipes the secrets from our
	 * own argv (ps shows it to every local user). */
	if (config_add_request(argc - 2, argv + 2, &f, &n, err, sizeof(err)) < 0)
		return die_usage("%s", err);
	int rc = n <= 256 ? control_client(argv[1], (const char *const *)f, n)
	                  : die_usage("too many options (at most 255)");
	config_strv_free(f);
	return rc;
}

/* streamfs rm MOUNTPOINT NAME; argv[0] is "rm". */
static int rm_main(int argc, char **argv)
{
	if (argc != 3)
		return die_usage("usage: streamfs rm MOUNTPOINT NAME");
	const char *f[2] = {"rm", argv[2]};
	return control_client(argv[1], f, 2);
}

int main(int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "";
	if (strcmp(sub, "status") == 0)
		return status_main(argc - 1, argv + 1);
	if (strcmp(sub, "add") == 0)
		return add_main(argc - 1, argv + 1);
	if (strcmp(sub, "rm") == 0)
		return rm_main(argc - 1, argv + 1);
	if (strcmp(sub, "wait") == 0)
		return wait_main(argc - 1, argv + 1);
	return mount_main(argc, argv);
}
