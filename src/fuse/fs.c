/*
 * fs.c - the FUSE operations (libfuse3 low-level API). See fs.h; the
 * pieces of this layer are listed in fs_int.h.
 *
 * Each operation only translates a request to the tree (tree.c) and the
 * stream, and the answer back. Decisions, each from a measurement on this
 * kernel:
 *  - Incomplete streams are opened direct_io (reads reach us even past the
 *    current size; short replies are not zero-filled; an error comes at
 *    its exact byte, not at a page boundary), and what they are sent is
 *    stored in the page cache once the stream is complete (push.c). Every open keeps the cache,
 *    and complete streams have long attribute timeouts: once a stream has
 *    been read through, later reads are page-cache reads.
 *  - st_size is never a misleading 0 and never decreases: stat and open
 *    wait for a size worth showing (a length, a first byte, or the end).
 *    st_blocks = ceil(size/512) so cp does not take the file for sparse;
 *    st_blksize = 1 MiB doubles cat's throughput.
 *  - No default_permissions: with it the kernel refreshes attributes
 *    (GETATTR) for every permission check, so getxattr and path walks
 *    would start streams and wait on them. Files are 0444 and the mount
 *    is read-only, so there is nothing for the kernel to check.
 *  - GETATTR with a file handle means lseek(SEEK_END) (or a read past
 *    i_size in page-cache mode): it waits for the end of the stream (S6).
 *  - sendfile() and splice() read through the page cache even of a
 *    direct_io file, and stop at the inode's size with no request
 *    reaching us (measured; copy_file_range() to another file system is
 *    refused): only a final size in stat makes them copy a whole running
 *    stream. --size=wait, and --size-unknown=wait for streams with no
 *    announced length, give one (SIZE_WAIT_UNKNOWN: a size first, then
 *    the end if no length came; park.c).
 *  - Lookups and listings start nothing: ls stays cheap.
 * What must wait is parked (park.c); no worker ever sleeps on data.
 */
#include "fs_int.h"

#include "streamfs/stream.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DONE_ATTR_TIMEOUT 3600.0 /* a complete stream never changes */

/* ---- allocation on the request paths ---------------------------------- */

/*
 * Every allocation a request makes goes through here, so tests can make
 * them fail: with STREAMFS_TEST_FAIL_ALLOC=N in the environment, every
 * Nth one returns NULL, and the request must be answered with an error
 * (ENOMEM), never crash or hang. Unset, this is calloc.
 */
static unsigned fail_every; /* set once before any request */
static atomic_uint alloc_count;

void req_alloc_init(void)
{
	const char *fe = getenv("STREAMFS_TEST_FAIL_ALLOC");
	fail_every = fe ? (unsigned)strtoul(fe, NULL, 10) : 0;
}

void *req_alloc(size_t n)
{
	if (fail_every && atomic_fetch_add(&alloc_count, 1) % fail_every == fail_every - 1) {
		errno = ENOMEM;
		return NULL;
	}
	return calloc(1, n);
}

/* ---- attributes ------------------------------------------------------- */

/* What stat shows: the exact size once complete, else the announced
 * length, else the bytes so far (never decreasing). */
static uint64_t shown_size(const struct stream_info *in)
{
	return in->length >= 0 ? (uint64_t)in->length : in->frontier;
}

/* Fill @st for @n; returns how long the kernel may keep it. */
static double fill_attr(struct fs *fs, const struct node *n, struct stream *s, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_atim = st->st_mtim = st->st_ctim = fs->mtime;
	st->st_blksize = BLKSIZE;
	if (n->dir) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return ENTRY_TIMEOUT;
	}
	struct stream_info in;
	stream_get_info(s, &in);
	char mt[32];
	if (stream_get_attr(s, "mtime", mt, sizeof(mt)) > 0) {
		/* A source's own date (a URL's Last-Modified), like curl -R. */
		st->st_mtim.tv_sec = (time_t)strtoll(mt, NULL, 10);
		st->st_mtim.tv_nsec = 0;
	}
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = (off_t)shown_size(&in);
	st->st_blocks = (blkcnt_t)((shown_size(&in) + 511) / 512);
	return in.state == STREAM_COMPLETE ? DONE_ATTR_TIMEOUT : 0.0;
}

/* Returns fuse_reply_entry's result: non-zero if the kernel did not get it. */
static int reply_entry(fuse_req_t req, struct fs *fs, const struct node *n, struct stream *s)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.ino = n->ino;
	e.generation = n->gen + 1;
	e.attr_timeout = fill_attr(fs, n, s, &e.attr);
	e.entry_timeout = ENTRY_TIMEOUT;
	return fuse_reply_entry(req, &e);
}

void reply_attr(fuse_req_t req, struct fs *fs, const struct node *n, struct stream *s)
{
	struct stat st;
	double t = fill_attr(fs, n, s, &st);
	fuse_reply_attr(req, &st, t);
}

struct node *req_node(fuse_req_t req, struct fs *fs, fuse_ino_t ino, struct stream **s)
{
	struct node *n = tree_get(fs, ino, s);
	if (!n)
		fuse_reply_err(req, ENOENT);
	return n;
}

/* ---- read-ahead ------------------------------------------------------- */

/*
 * After a jump a reader asks for WINDOW_MIN: scattered reads (a database's
 * pages) need no more, and every byte more is transfer that competes with
 * the next read (60 random sqlite lookups in a 119 MiB file behind a
 * 20 MiB/s server: 1.21 s and 55 MiB sent with 1 MiB, 0.51 s and 17 MiB
 * with 128 KiB). A read that follows on is a sequential reader: at least
 * WINDOW_SEQ, doubling while it reads on.
 */
#define WINDOW_MIN (128ULL << 10)
#define WINDOW_SEQ (2ULL << 20)
#define WINDOW_MAX (64ULL << 20)
/*
 * A jump to within this much of the end, in the second half of the file,
 * fetches up to the end at once. Tools that probe a file read its end in
 * one go: `file` reads the last 7 MiB (as 1 MiB FUSE reads, one after the
 * other), unzip the central directory, ffprobe a moov atom. Grown from
 * 1 MiB by doubling, such a read took four range requests one after the
 * other (`file -b` of a 64 MiB MP4 from nginx: 17.7 ms for its read of
 * the end). Not in the first half: in a small file every read is near the
 * end, and fill=ondemand would fetch all of it at the first read.
 */
#define WINDOW_TAIL (8ULL << 20)

/* How far ahead of @off (at least @size) a reader of @h will soon need. */
static uint64_t read_window(struct handle *h, uint64_t off, size_t size)
{
	uint64_t next = __atomic_load_n(&h->next_off, __ATOMIC_RELAXED);
	uint64_t win = __atomic_load_n(&h->window, __ATOMIC_RELAXED);
	if (off == next && off != 0) {
		win = win * 2 > WINDOW_MAX ? WINDOW_MAX : win * 2;
		win = win < WINDOW_SEQ ? WINDOW_SEQ : win;
	} else {
		win = WINDOW_MIN;
		int64_t len = h->length;
		if (len > 0 && (uint64_t)len > off && off >= (uint64_t)len / 2 &&
		    (uint64_t)len - off <= WINDOW_TAIL)
			win = (uint64_t)len - off;
	}
	__atomic_store_n(&h->window, win, __ATOMIC_RELAXED);
	__atomic_store_n(&h->next_off, off + size, __ATOMIC_RELAXED);
	return win > size ? win : size;
}

/* ---- operations ------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Without this the kernel sends GETATTR before every read and drops a
	 * file's page cache whenever its size changes. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Parked page-cache readers count against max_background (default
	 * 12); past it every other page-cache read on the mount stalls. */
	conn->max_background = 1024;
	conn->congestion_threshold = 768;
	/* The reply to this INIT is sent next, by this thread. */
	passthrough_init_reply_next();
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fuse_req_userdata(req);
	session_after_init(fs);
	struct stream *s;
	int err;
	struct node *n = tree_lookup(fs, parent, name, &s, &err);
	if (!n) {
		fuse_reply_err(req, err);
		return;
	}
	struct fuse_forget_data undo = {.ino = n->ino, .nlookup = 1};
	if (reply_entry(req, fs, n, s) != 0)
		tree_forget(fs, &undo, 1);
	if (s)
		stream_unref(s);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct fs *fs = fuse_req_userdata(req);
	struct fuse_forget_data f = {.ino = ino, .nlookup = nlookup};
	tree_forget(fs, &f, 1);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *fs = fuse_req_userdata(req);
	tree_forget(fs, forgets, count);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	session_after_init(fs);
	struct stream *s;
	struct node *n;
	if (fi && fi->fh) {
		/* Through an open file (a read past the kernel's size, an
		 * lseek(SEEK_END), fstat): the file answers for its own stream,
		 * also once removed from the tree (rm), when its node no longer
		 * has one: open handles keep reading what was there. */
		struct handle *h = (struct handle *)(uintptr_t)fi->fh;
		n = h->n;
		s = stream_ref(h->s);
	} else {
		n = tree_get_open(fs, ino, &s);
		if (!n) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		if (n->dir) {
			reply_attr(req, fs, n, NULL);
			return;
		}
	}
	stream_start(s);
	enum stream_wait_kind kind =
	    fi || n->size == SIZE_WAIT ? STREAM_WAIT_END : STREAM_WAIT_SIZE;
	park(req, fs, n, s, P_GETATTR, kind, 0, 0, fi);
	stream_unref(s);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = req_node(req, fs, ino, &s);
	if (!n)
		return;
	if (n->dir) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		stream_unref(s);
		fuse_reply_err(req, EROFS);
		return;
	}
	stream_start(s);
	park(req, fs, n, s, P_OPEN, STREAM_WAIT_SIZE, 0, 0, fi);
	stream_unref(s);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;

	/* Sources with random access fetch what this reader will need. */
	if (stream_can_fetch(h->s))
		stream_want(h->s, (uint64_t)off, read_window(h, (uint64_t)off, size));

	/* The common case, data already here: no allocation, no waiter. */
	int r = reply_present(req, h->s, (uint64_t)off, size, h->push);
	if (r == 0)
		return; /* replied: a release may free h from here on */
	if (r != -ERANGE) {
		fuse_reply_err(req, -r == ENOMEM ? ENOMEM : EIO);
		return;
	}
	park_read(req, fs, h, h->n->read == READ_PARTIAL ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE,
	          (uint64_t)off, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	passthrough_release(fs, h);
	if (h->push)
		push_adopt(fs, h);
	else
		handle_free(fs, h);
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = tree_get(fs, ino, &s);
	if (s)
		stream_unref(s);
	if (!n || !n->dir) {
		fuse_reply_err(req, n ? ENOTDIR : ENOENT);
		return;
	}
	fi->cache_readdir = 1; /* add/rm invalidate it */
	fuse_reply_open(req, fi);
}

/* A readdir reply being filled. */
struct dirbuf {
	fuse_req_t req;
	char *buf;
	size_t size, used;
};

static bool add_dirent(void *arg, const char *name, fuse_ino_t ino, bool dir, off_t next)
{
	struct dirbuf *db = arg;
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = dir ? S_IFDIR : S_IFREG;
	size_t room = db->size - db->used;
	size_t need = fuse_add_direntry(db->req, db->buf + db->used, room, name, &st, next);
	if (need > room)
		return false;
	db->used += need;
	return true;
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct dirbuf db = {.req = req, .buf = req_alloc(size), .size = size};
	if (!db.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int r = tree_list(fs, ino, off, add_dirent, &db);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, db.buf, db.used);
	free(db.buf);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fuse_req_userdata(req);
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	uint64_t bytes = 0;
	struct stream **v = fs_streams(fs);
	size_t files = 0;
	for (size_t i = 0; v && v[i]; i++, files++) {
		struct stream_info in;
		stream_get_info(v[i], &in);
		bytes += in.held;
	}
	fs_streams_free(v);
	sv.f_bsize = BLKSIZE;
	sv.f_frsize = 4096;
	sv.f_blocks = (bytes + 4095) / 4096;
	sv.f_files = files;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

const struct fuse_lowlevel_ops fs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .getxattr = attrs_getxattr,
    .listxattr = attrs_listxattr,
    .statfs = op_statfs,
};
