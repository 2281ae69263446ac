/*
 * session.c - the FUSE session around the tree: fs_new/fs_free, mounting,
 * the request loop, shutdown, and the notifications that tell the kernel
 * of add and rm. See fs.h and fs_int.h.
 *
 * Shutdown here is only the FUSE side: refuse new files, answer every
 * parked request (EIO), unmount. How the sources are stopped (cancelling
 * every stream, killing command groups, waiting for them) is the caller's
 * decision (the daemon's shutdown sequence, with sources_shutdown()).
 *
 * fs->mounted and the session's device are guarded by fs->mount_lock: a
 * notification (from add/rm, in the I/O thread) holds it while it writes
 * to the device, so fs_shutdown() cannot close the device under it, nor a
 * notification go to a descriptor number reused after the unmount. Replies
 * to parked requests, which the I/O thread sends too, are all sent before
 * the unmount (park_wake_all() waits for them); replies from FUSE workers
 * are, because the loop has returned.
 */
#include "fs_int.h"

#include "log.h"
#include "xpthread.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fs *fs_new(void)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return NULL;
	req_alloc_init();
	clock_gettime(CLOCK_REALTIME, &fs->mtime);
	xpthread_rwlock_init(&fs->lock, NULL);
	xpthread_mutex_init(&fs->mount_lock, NULL);
	xpthread_mutex_init(&fs->hlock, NULL);
	xpthread_mutex_init(&fs->pt_lock, NULL);
	xpthread_mutex_init(&fs->plock, NULL);
	xpthread_cond_init(&fs->drained, NULL);
	xpthread_mutex_init(&fs->push_lock, NULL);
	xpthread_cond_init(&fs->push_cond, NULL);
	xpthread_mutex_init(&fs->reply_lock, NULL);
	xpthread_cond_init(&fs->reply_cond, NULL);
	TAILQ_INIT(&fs->handles);
	TAILQ_INIT(&fs->parked);
	TAILQ_INIT(&fs->replies);
	fs->uid = getuid();
	fs->gid = getgid();
	if (tree_init(fs) < 0) {
		fs_free(fs);
		errno = ENOMEM;
		return NULL;
	}
	return fs;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	/* Every parked request was answered: by its stream (the sources are
	 * done) or by fs_shutdown(). */
	assert(TAILQ_EMPTY(&fs->parked));
	replier_stop(fs);
	push_stop(fs);
	tree_free(fs);
	handles_free_all(fs);
	if (fs->se)
		fuse_session_destroy(fs->se);
	xpthread_rwlock_destroy(&fs->lock);
	xpthread_mutex_destroy(&fs->mount_lock);
	xpthread_mutex_destroy(&fs->hlock);
	idvec_free(&fs->pt_closing);
	xpthread_mutex_destroy(&fs->pt_lock);
	xpthread_mutex_destroy(&fs->plock);
	xpthread_cond_destroy(&fs->drained);
	xpthread_mutex_destroy(&fs->push_lock);
	xpthread_mutex_destroy(&fs->reply_lock);
	xpthread_cond_destroy(&fs->reply_cond);
	xpthread_cond_destroy(&fs->push_cond);
	free(fs);
}

/* ---- libfuse's messages ----------------------------------------------- */

/*
 * libfuse reports problems through its logger, from whichever thread
 * meets them; the last message is kept so a failed mount can say why in
 * one line of our own.
 */
static pthread_mutex_t last_msg_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_msg[512]; /* protected by last_msg_lock */

__attribute__((format(printf, 2, 0))) static void fuse_logger(enum fuse_log_level level,
                                                              const char *fmt, va_list ap)
{
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t len = strlen(msg);
	while (len > 0 && msg[len - 1] == '\n')
		msg[--len] = '\0';
	/* "fuse: unknown option(s): `-o nosuchopt'" -> "unknown option(s): -o nosuchopt" */
	char *m = msg;
	if (strncmp(m, "fuse: ", 6) == 0)
		m += 6;
	char clean[512];
	size_t k = 0;
	for (; *m && k < sizeof(clean) - 1; m++)
		if (*m != '`' && *m != '\'')
			clean[k++] = *m;
	clean[k] = '\0';
	xpthread_mutex_lock(&last_msg_lock);
	snprintf(last_msg, sizeof(last_msg), "%s", clean);
	xpthread_mutex_unlock(&last_msg_lock);
	log_debug("libfuse: %s", msg);
}

/* libfuse's last message into @buf, or @dflt if there was none. */
static void last_message(char *buf, size_t size, const char *dflt)
{
	xpthread_mutex_lock(&last_msg_lock);
	snprintf(buf, size, "%s", last_msg[0] ? last_msg : dflt);
	xpthread_mutex_unlock(&last_msg_lock);
}

/* ---- mounting --------------------------------------------------------- */

/* libfuse's arguments: ours, then the user's -o, then ro again. */
static int mount_args(struct fuse_args *args, char *const *fuse_opts)
{
	if (fuse_opt_add_arg(args, "streamfs") ||
	    fuse_opt_add_arg(args, "-oro,auto_unmount,fsname=streamfs,"
	                           "subtype=streamfs"))
		return -1;
	for (size_t i = 0; fuse_opts && fuse_opts[i]; i++)
		if (fuse_opt_add_arg(args, "-o") || fuse_opt_add_arg(args, fuse_opts[i]))
			return -1;
	/* Last, so that it wins: libfuse applies ro/rw in order, and mount(8)
	 * passes "rw" for fstab's "defaults". A later "rw" is ignored, not
	 * refused: the mount is read-only whatever -o says. */
	return fuse_opt_add_arg(args, "-oro") ? -1 : 0;
}

/* Undo mountinfo's octal escapes (\040 for a space, ...) in place. */
static void unescape_octal(char *s)
{
	char *o = s;
	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

/*
 * The mount's read-ahead, raised to 4 MiB: four of the largest requests
 * (1 MiB). The kernel starts a FUSE mount at 128 KiB and lets INIT only
 * lower it; page-cache reads (a complete stream opened again) then reach
 * us in 128 KiB requests, one round trip each. At 1 MiB they measured
 * 2.5-2.8 GB/s instead of 1.4-1.7 (1 GiB, a persisted stream read after a
 * remount). At 4 MiB the kernel keeps several requests in flight, so a
 * worker answers one while the reader copies the last: a complete 1 GiB
 * stream nothing had pushed, read with dd bs=128K, 3551-4164 MiB/s
 * against 2345-3170 at 1 MiB (6 runs each, interleaved; 8 MiB and more
 * varied more: 2158-3825). Root only (the bdi's sysfs file); without it
 * the kernel's default stays, which is only slower. The file is found at
 * mount through /proc/self/mountinfo (a stat of the mount point would be
 * a request to this daemon, whose loop is not running yet), and written
 * once INIT is done (session_after_init()): INIT's reply would set it
 * back.
 *
 * The same under a --cache-size budget: page-cache reads of evicted blocks
 * park, each needing room, and four in flight per reader once stalled a
 * 2 MiB budget; the budget now guarantees progress however many readers
 * want room (stream_cache.c, admit()).
 */
#define READ_AHEAD_KB "4096"

static void find_readahead(struct fs *fs, const char *where)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return;
	char line[4096], dev[64] = "";
	while (fgets(line, sizeof(line), f)) {
		/* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE ... */
		char majmin[64], root[1024], mp[2048];
		if (sscanf(line, "%*s %*s %63s %1023s %2047s", majmin, root, mp) != 3)
			continue;
		const char *sep = strstr(line, " - ");
		if (!sep || strncmp(sep + 3, "fuse.streamfs ", 14) != 0)
			continue;
		unescape_octal(mp);
		if (strcmp(mp, where) == 0)
			snprintf(dev, sizeof(dev), "%s", majmin); /* the last one: ours */
	}
	fclose(f);
	if (dev[0])
		snprintf(fs->readahead, sizeof(fs->readahead), "/sys/class/bdi/%s/read_ahead_kb",
		         dev);
}

void session_after_init(struct fs *fs)
{
	if (!fs->readahead[0] || atomic_exchange(&fs->readahead_done, true))
		return;
	int fd = open(fs->readahead, O_WRONLY | O_CLOEXEC);
	if (fd < 0 ||
	    write(fd, READ_AHEAD_KB, strlen(READ_AHEAD_KB)) != (ssize_t)strlen(READ_AHEAD_KB))
		log_debug("read-ahead stays the kernel's: %s: %s", fs->readahead, strerror(errno));
	if (fd >= 0)
		close(fd);
}

int fs_mount(struct fs *fs, const char *mountpoint, char *const *fuse_opts, char *err,
             size_t errlen)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	char why[512];
	int r = -1;
	fuse_set_log_func(fuse_logger);
	xpthread_mutex_lock(&last_msg_lock);
	last_msg[0] = '\0';
	xpthread_mutex_unlock(&last_msg_lock);
	if (mount_args(&args, fuse_opts) < 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	fs->se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), fs);
	if (!fs->se) {
		last_message(why, sizeof(why), "rejected by libfuse");
		snprintf(err, errlen, "bad mount options: %s", why);
		goto out;
	}
	/* Before the mount: resolving it after would ask this daemon. */
	char *where = realpath(mountpoint, NULL);
	if (fuse_session_mount(fs->se, mountpoint) != 0) {
		free(where);
		last_message(why, sizeof(why), "mount failed");
		snprintf(err, errlen, "cannot mount on '%s': %s", mountpoint, why);
		goto out;
	}
	if (where)
		find_readahead(fs, where);
	free(where);
	passthrough_install(fs);
	xpthread_mutex_lock(&fs->mount_lock);
	fs->mounted = true;
	xpthread_mutex_unlock(&fs->mount_lock);
	r = 0;
out:
	fuse_opt_free_args(&args);
	return r;
}

int fs_loop(struct fs *fs)
{
	if (fuse_set_signal_handlers(fs->se) != 0)
		return -1;
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	if (!cfg) {
		fuse_remove_signal_handlers(fs->se);
		return -1;
	}
	/* Workers never sleep on data, so a few threads carry any load; more
	 * only help copy replies of data already present in parallel. */
	fuse_loop_cfg_set_max_threads(cfg, 16);
	fuse_loop_cfg_set_idle_threads(cfg, 4);
	int r = fuse_session_loop_mt(fs->se, cfg);
	fuse_loop_cfg_destroy(cfg);
	fuse_remove_signal_handlers(fs->se);
	return r;
}

void fs_shutdown(struct fs *fs)
{
	/* Under the tree lock: an add that got in before is in the tree (the
	 * caller stops its stream with the others), one that comes after is
	 * refused. */
	xpthread_rwlock_wrlock(&fs->lock);
	bool was = atomic_exchange(&fs->shut, true);
	xpthread_rwlock_unlock(&fs->lock);
	if (was)
		return;
	size_t k = park_wake_all(fs);
	if (k)
		log_debug("answered %zu parked request%s at shutdown", k, k == 1 ? "" : "s");
	/* Every reply handed to the reply thread is sent: park_wake_all()
	 * waited for them. */
	replier_stop(fs);
	/* After the parked requests: a store into the page cache can wait
	 * on a page that a parked read holds locked. */
	push_stop(fs);
	xpthread_mutex_lock(&fs->mount_lock);
	if (fs->mounted) {
		fuse_session_unmount(fs->se);
		fs->mounted = false;
	}
	xpthread_mutex_unlock(&fs->mount_lock);
}

/* ---- notifications ---------------------------------------------------- */

void session_inval_dir(struct fs *fs, fuse_ino_t ino)
{
	xpthread_mutex_lock(&fs->mount_lock);
	if (fs->mounted)
		fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
	xpthread_mutex_unlock(&fs->mount_lock);
}

void session_notify_gone(struct fs *fs, const struct gone *v, size_t k)
{
	assert(k > 0);
	xpthread_mutex_lock(&fs->mount_lock);
	if (fs->mounted) {
		/* Every level, deepest first: a directory dropped from the
		 * kernel's cache while a file under it is open would leave that
		 * file and the levels between cached (never forgotten, so their
		 * nodes never freed) after the file is closed. */
		for (size_t i = 0; i < k; i++)
			fuse_lowlevel_notify_delete(fs->se, v[i].parent, v[i].ino, v[i].name,
			                            strlen(v[i].name));
		fuse_lowlevel_notify_inval_inode(fs->se, v[k - 1].parent, 0, 0);
	}
	xpthread_mutex_unlock(&fs->mount_lock);
}
