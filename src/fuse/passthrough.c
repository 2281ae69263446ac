/*
 * passthrough.c - complete streams read straight from the store (FUSE
 * passthrough, Linux 6.9 and later, root only).
 *
 * Once a stream is complete and all of it is in the store, a file opened
 * on it can be served by the kernel itself: an open reply that names a
 * "backing file" (the store's file, registered with an ioctl on the
 * session's device) makes the kernel send that file's reads, mmap and
 * splice to the store file directly. Its reads never reach this daemon,
 * come from the store file's page cache (the pages the fill wrote), and
 * nothing needs to be copied into the FUSE file's own page cache (push.c)
 * for the next reader.
 *
 * libfuse 3.14 knows none of this, so it is done underneath it, through
 * its custom I/O hook (fuse_session_custom_io): every message to the
 * kernel passes io_writev(), which
 *  - adds FUSE_PASSTHROUGH (and a stack depth) to the INIT reply; the
 *    kernel ignores it if it has no passthrough, and says nothing either
 *    way, so the first registration tells (and a refusal turns the
 *    feature off for the mount);
 *  - turns an open reply into a passthrough one when the thread sending
 *    it asked for it just before (a thread-local: fuse_reply_open() writes
 *    from the thread that calls it, synchronously).
 * The layouts patched are the kernel's ABI (<linux/fuse.h>, 7.40): struct
 * fuse_init_out's flags (offset 12), flags2 (32) and max_stack_depth
 * (36); struct fuse_open_out's open_flags (8) and backing_id (12).
 *
 * The kernel's rules, which decide when a file may be opened this way:
 *  - while any file of an inode is open for passthrough, every other open
 *    of it must be too (else the open fails with EIO), and with the same
 *    backing file: so one registration per node, kept for the node's
 *    life, and the mode of a node's opens is sticky while any is open;
 *  - a passthrough open fails while a file of the inode is open in
 *    page-cache mode: so a node with such opens gets more of them;
 *  - a reader of the backing file sees holes as zeros: so the stream is
 *    held whole (stream_hold_whole(): nothing evicted) while any
 *    passthrough file of it is open, and never under a --cache-size
 *    budget (where that would keep room from the other streams; the
 *    default --cache-min-free only evicts when the disk fills, and then
 *    the fill of others pauses instead, as for a command's bytes);
 *  - FOPEN_KEEP_CACHE is refused with it (the page cache is not used).
 *  - a direct_io open (a running stream) fails too while a file of the
 *    inode is open for passthrough, and so does a mapping of a direct_io
 *    file that is already open. An open decided while the stream ran may
 *    reach the kernel after one decided once it completed, so a node gets
 *    passthrough opens only while it has no direct_io (nor page-cache)
 *    file open: the decisions are taken under one lock (fs->pt_lock),
 *    with the stream's state read under it, and counted per node until
 *    their release. A file opened again while the first reader still has
 *    it open is therefore read in page-cache mode, through the daemon.
 *
 * STREAMFS_PASSTHROUGH=off in the environment leaves it off (the INIT
 * reply untouched), as on a kernel without it.
 */
#include "fs_int.h"

#include "log.h"
#include "streamfs/stream.h"
#include "xpthread.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* The kernel's ABI (include/uapi/linux/fuse.h, 7.40); Debian 12's headers
 * (7.38) predate it. */
#define PT_FUSE_INIT_EXT (1u << 30)
#define PT_FUSE_PASSTHROUGH_FLAGS2 (1u << (37 - 32))
#define PT_FOPEN_KEEP_CACHE (1u << 1)
#define PT_FOPEN_PASSTHROUGH (1u << 7)
struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define PT_IOC_BACKING_OPEN _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

#define OUT_HEADER 16 /* struct fuse_out_header */
#define INIT_OUT 64   /* struct fuse_init_out, as libfuse 3.14 sends it */
#define OPEN_OUT 16   /* struct fuse_open_out */

/*
 * The depth the mount declares: 2 lets the store live on a stacked file
 * system (overlayfs, as in a container); the price is that nothing can be
 * stacked on the streamfs mount itself.
 */
#define STACK_DEPTH 2

static _Thread_local bool init_next;    /* this thread's next write is INIT's reply */
static _Thread_local int32_t open_next; /* ... an open reply, for this backing id */
static struct fs *the_fs;               /* for io_writev(): set before the loop */

static void put32(void *base, size_t off, uint32_t v)
{
	memcpy((char *)base + off, &v, sizeof(v));
}

static uint32_t get32(const void *base, size_t off)
{
	uint32_t v;
	memcpy(&v, (const char *)base + off, sizeof(v));
	return v;
}

/* Does the kernel take a backing file? A memfd registered and let go. */
static bool probe(int devfd)
{
	int fd = memfd_create("streamfs-probe", MFD_CLOEXEC);
	if (fd < 0)
		return false;
	struct pt_backing_map map = {.fd = fd};
	int id = ioctl(devfd, PT_IOC_BACKING_OPEN, &map);
	int e = errno;
	close(fd);
	if (id > 0) {
		uint32_t u = (uint32_t)id;
		ioctl(devfd, PT_IOC_BACKING_CLOSE, &u);
		return true;
	}
	log_debug("passthrough: not available (%s)", strerror(e));
	return false;
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	return read(fd, buf, len);
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	bool init = false;
	if (init_next && count == 2 && iov[0].iov_len == OUT_HEADER && iov[1].iov_len == INIT_OUT &&
	    get32(iov[0].iov_base, 4) == 0) {
		/* The kernel reads flags2 only with FUSE_INIT_EXT, which it
		 * offers itself since 5.17 (the kernels with passthrough). */
		void *o = iov[1].iov_base;
		put32(o, 12, get32(o, 12) | PT_FUSE_INIT_EXT);
		put32(o, 32, get32(o, 32) | PT_FUSE_PASSTHROUGH_FLAGS2);
		put32(o, 36, STACK_DEPTH);
		init = true;
	}
	init_next = false;
	if (open_next && count == 2 && iov[0].iov_len == OUT_HEADER && iov[1].iov_len == OPEN_OUT &&
	    get32(iov[0].iov_base, 4) == 0) {
		void *o = iov[1].iov_base;
		put32(o, 8, (get32(o, 8) & ~PT_FOPEN_KEEP_CACHE) | PT_FOPEN_PASSTHROUGH);
		put32(o, 12, (uint32_t)open_next);
	}
	open_next = 0;
	ssize_t r = writev(fd, iov, count);
	/* The kernel has processed the INIT reply when writev returns. */
	if (init && r >= 0 && the_fs)
		atomic_store(&the_fs->passthrough, probe(fd));
	return r;
}

int passthrough_install(struct fs *fs)
{
	const char *env = getenv("STREAMFS_PASSTHROUGH");
	if (env && strcmp(env, "off") == 0)
		return 0;
	static const struct fuse_custom_io io = {.writev = io_writev, .read = io_read};
	the_fs = fs;
	int r = fuse_session_custom_io(fs->se, &io, fuse_session_fd(fs->se));
	if (r != 0)
		log_debug("passthrough: no custom I/O in libfuse (%s)", strerror(-r));
	return r;
}

void passthrough_init_reply_next(void)
{
	init_next = the_fs != NULL;
}

/* Register @fd as @n's backing file if it has none. Under fs->pt_lock. */
static int32_t backing_of(struct fs *fs, struct node *n, int fd)
{
	if (n->backing_id > 0)
		return n->backing_id;
	xpthread_mutex_lock(&fs->mount_lock);
	int id = -1, e = ESHUTDOWN;
	if (fs->mounted) {
		struct pt_backing_map map = {.fd = fd};
		id = ioctl(fuse_session_fd(fs->se), PT_IOC_BACKING_OPEN, &map);
		e = errno;
	}
	xpthread_mutex_unlock(&fs->mount_lock);
	if (id <= 0) {
		log_warn("%s: cannot read it straight from the store: %s", n->name, strerror(e));
		if (e == EPERM || e == ENOTTY || e == EINVAL)
			atomic_store(&fs->passthrough, false);
		return -1;
	}
	n->backing_id = id;
	return id;
}

/* The backing ids of freed nodes, to close once fs->pt_lock is dropped
 * (close_ids()). Under fs->pt_lock. */
static struct idvec take_closing(struct fs *fs)
{
	struct idvec v = fs->pt_closing;
	fs->pt_closing = (struct idvec){0};
	return v;
}

static void close_ids(struct fs *fs, struct idvec *v)
{
	if (v->len) {
		xpthread_mutex_lock(&fs->mount_lock);
		for (size_t i = 0; fs->mounted && i < v->len; i++) {
			uint32_t id = (uint32_t)v->ptr[i];
			ioctl(fuse_session_fd(fs->se), PT_IOC_BACKING_CLOSE, &id);
		}
		xpthread_mutex_unlock(&fs->mount_lock);
	}
	idvec_free(v);
}

bool passthrough_expected(struct fs *fs, const struct stream_info *in)
{
	/* Not under a --cache-size budget: a stream held whole there would
	 * keep its blocks from every other stream for as long as a file is
	 * open (the budget's progress rules assume eviction can make room).
	 * Not keep= streams: they drop their first bytes. */
	return atomic_load(&fs->passthrough) && !fs->cache_bounded && !in->keep;
}

void passthrough_open(struct fs *fs, struct handle *h, struct stream_info *in)
{
	struct node *n = h->n;
	int32_t id = -1;
	int fd = -1;
	bool refused = false;
	/* The state is read under the lock that orders the decisions: a
	 * direct_io open decided on a running stream is counted before any
	 * later open can see the stream complete. The registration (an ioctl
	 * that waits for nothing) is done once per node under it, so that
	 * two opens cannot register two backing files for one node. */
	xpthread_mutex_lock(&fs->pt_lock);
	struct idvec closing = take_closing(fs);
	stream_get_info(h->s, in);
	if (in->state != STREAM_COMPLETE) {
		h->mode = H_DIRECT;
		n->direct_opens++;
	} else {
		if (passthrough_expected(fs, in) && n->direct_opens == 0 && n->cached_opens == 0) {
			fd = stream_hold_whole(h->s);
			if (fd >= 0)
				id = backing_of(fs, n, fd);
		}
		if (id > 0) {
			h->mode = H_PASSTHROUGH;
			n->pt_opens++;
			open_next = id;
		} else {
			refused = n->pt_opens > 0;
			h->mode = H_CACHED;
			n->cached_opens++;
		}
	}
	xpthread_mutex_unlock(&fs->pt_lock);
	if (refused) /* said outside the lock: a log line is a write */
		log_warn("%s: cannot open it as the other open files are (read from the store): "
		         "the kernel will refuse it",
		         n->name);
	if (fd >= 0 && id <= 0)
		stream_release_whole(h->s);
	close_ids(fs, &closing);
}

void passthrough_sent(void)
{
	open_next = 0;
}

void passthrough_release(struct fs *fs, struct handle *h)
{
	if (h->mode == H_NONE)
		return;
	xpthread_mutex_lock(&fs->pt_lock);
	if (h->mode == H_PASSTHROUGH)
		h->n->pt_opens--;
	else if (h->mode == H_CACHED)
		h->n->cached_opens--;
	else
		h->n->direct_opens--;
	struct idvec closing = take_closing(fs);
	xpthread_mutex_unlock(&fs->pt_lock);
	if (h->mode == H_PASSTHROUGH)
		stream_release_whole(h->s);
	h->mode = H_NONE;
	close_ids(fs, &closing);
}

unsigned passthrough_count(struct fs *fs, const struct node *n)
{
	xpthread_mutex_lock(&fs->pt_lock);
	unsigned k = n->pt_opens;
	xpthread_mutex_unlock(&fs->pt_lock);
	return k;
}

void passthrough_forget_node(struct fs *fs, struct node *n)
{
	xpthread_mutex_lock(&fs->pt_lock);
	/* Without memory it stays registered until the unmount: harmless. */
	if (n->backing_id > 0 && idvec_push(&fs->pt_closing, n->backing_id) < 0)
		log_debug("passthrough: backing id %d kept until unmount", (int)n->backing_id);
	n->backing_id = 0;
	xpthread_mutex_unlock(&fs->pt_lock);
}
