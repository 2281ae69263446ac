/*
 * fs.c - the FUSE layer (libfuse3 low-level API). See fs.h.
 *
 * Decisions, each from a measurement on this kernel (DESIGN.md section 3):
 *  - Reads, opens and stats that must wait are parked on the stream as a
 *    struct pending and answered by the thread that brings the data. FUSE
 *    workers never sleep on data, so hundreds of waiting readers cannot
 *    starve ls or stat.
 *  - An interrupt (Ctrl-C, SIGKILL, timeout) unparks the request and
 *    answers EINTR. The race with a normal completion is settled by the
 *    stream: stream_unwait() says who owns the pending; the completer
 *    first disarms the interrupt callback (which waits for a running one)
 *    and only then replies.
 *  - Incomplete streams are opened direct_io (reads reach us even past the
 *    current size; short replies are not zero-filled). Complete ones with
 *    keep_cache and long attribute timeouts: re-reads at page-cache speed.
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
 *  - Replies are sent from memory (pread into a per-thread buffer), never
 *    as fd buffers, which libfuse 3.14 turns into an mmap per request.
 *
 * The tree grows with "streamfs add" and shrinks with "streamfs rm" while
 * mounted, under fs->lock (a read-write lock: every request reads, only
 * add/rm write). A removed node is marked and loses its stream at once,
 * but is freed only when nothing can name it any more: the kernel has
 * forgotten every lookup of it (FORGET) and no open handle points to it.
 * Until then a request on it finds it marked (ENOENT). Its inode number
 * is then reused with a new generation. A request's own node needs no
 * reference of ours: the kernel holds the inode (so sends no FORGET for
 * it) until the request is answered; handles count as opens.
 * Requests work on their own reference to the stream, taken under the lock.
 *
 * Lock order: fs->lock, then a stream's lock. No reply, notification or
 * stream callback runs under fs->lock.
 */
#define FUSE_USE_VERSION 312

#include "fs.h"

#include "log.h"
#include "streamfs/cache.h"
#include "streamfs/source.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLKSIZE (1 << 20)
#define DONE_ATTR_TIMEOUT 3600.0 /* a complete stream never changes */
#define ENTRY_TIMEOUT 1.0

struct node {
	fuse_ino_t ino;
	char *name;
	struct node *parent; /* NULL once removed */
	uint64_t gen;        /* the inode's generation: bumped when a number is reused */
	uint64_t nlookup;    /* lookups the kernel holds; atomic, and only under fs->lock */
	unsigned nopen;      /* open handles; atomic, and only under fs->lock */
	bool dir;
	bool removed;       /* protected by fs->lock */
	struct node **kids; /* dir */
	size_t nkids, capkids;
	struct stream *s; /* file; protected by fs->lock (NULL once removed) */
	enum size_policy size;
	enum read_policy read;
	enum start_policy start;
	char *source;
};

/* An open file. */
struct handle {
	struct node *n;
	struct stream *s; /* a reference */
	struct handle *prev, *next; /* on fs->handles, under fs->hlock */
	/* Read-ahead for random access (URL sources): reads that follow on
	 * from the previous one double the window (1 MiB up to 64 MiB); a
	 * jump starts it again. Updated with relaxed atomics: the kernel may
	 * send reads of one file handle in parallel, and a lost update only
	 * makes one window a little smaller. */
	uint64_t next_off;
	uint64_t window;
};

struct fs {
	struct fuse_session *se;
	pthread_rwlock_t lock; /* the tree: nodes, kids lists, node->s, node->removed */
	struct node **nodes;   /* by inode number (NULL: free); nodes[FUSE_ROOT_ID] is the root */
	size_t nnodes, capnodes;
	fuse_ino_t *freeino;   /* numbers of freed nodes, to reuse; room for capnodes */
	size_t nfree;
	uint64_t reuses;       /* numbers reused so far: the next generation */
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
	bool mounted;
	atomic_bool shut; /* fs_shutdown() has begun: no more files are added */
	char control[108]; /* the control socket's name, shown as user.streamfs.control */
	struct cache *cache; /* the store budget, for status; may be NULL */
	/* Open handles, so those the kernel never released (the daemon stops
	 * first) are freed with the file system. */
	pthread_mutex_t hlock;
	struct handle handles; /* list head */
};


#define WINDOW_MIN (1ULL << 20)
#define WINDOW_MAX (64ULL << 20)

/* How far ahead of @off (at least @size) a reader of @h will soon need. */
static uint64_t read_window(struct handle *h, uint64_t off, size_t size)
{
	uint64_t next = __atomic_load_n(&h->next_off, __ATOMIC_RELAXED);
	uint64_t win = __atomic_load_n(&h->window, __ATOMIC_RELAXED);
	if (off == next && off != 0)
		win = win * 2 > WINDOW_MAX ? WINDOW_MAX : win * 2;
	else
		win = WINDOW_MIN;
	__atomic_store_n(&h->window, win, __ATOMIC_RELAXED);
	__atomic_store_n(&h->next_off, off + size, __ATOMIC_RELAXED);
	return win > size ? win : size;
}

enum pending_op { P_READ, P_OPEN, P_GETATTR };

/* A request parked on a stream. */
struct pending {
	struct stream_waiter w;
	fuse_req_t req;
	struct fs *fs;
	struct node *n;
	struct stream *s; /* a reference */
	enum pending_op op;
	bool with_fh;               /* P_GETATTR: carried a file handle */
	struct fuse_file_info fi;   /* P_OPEN */
};

/* ---- allocation on the request paths ---------------------------------- */

/*
 * Every allocation a request makes goes through here, so tests can make
 * them fail: with STREAMFS_TEST_FAIL_ALLOC=N in the environment, every
 * Nth one returns NULL, and the request must be answered with an error
 * (ENOMEM), never crash or hang. Unset, this is calloc.
 */
static unsigned fail_every;      /* set once before any request */
static atomic_uint alloc_count;

static void *req_alloc(size_t n)
{
	if (fail_every && atomic_fetch_add(&alloc_count, 1) % fail_every == fail_every - 1) {
		errno = ENOMEM;
		return NULL;
	}
	return calloc(1, n);
}

/* ---- the tree --------------------------------------------------------- */

static struct node *node_new(struct fs *fs, struct node *parent, const char *name, bool dir)
{
	if (fs->nfree == 0 && fs->nnodes == fs->capnodes) {
		size_t cap = fs->capnodes ? fs->capnodes * 2 : 64;
		struct node **nn = realloc(fs->nodes, cap * sizeof(*nn));
		if (!nn)
			return NULL;
		fs->nodes = nn;
		/* The free list never needs more room than there are nodes, so
		 * freeing a node cannot fail. */
		fuse_ino_t *fi = realloc(fs->freeino, cap * sizeof(*fi));
		if (!fi)
			return NULL;
		fs->freeino = fi;
		fs->capnodes = cap;
	}
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	if (parent) {
		if (parent->nkids == parent->capkids) {
			size_t cap = parent->capkids ? parent->capkids * 2 : 8;
			struct node **nk = realloc(parent->kids, cap * sizeof(*nk));
			if (!nk) {
				free(n->name);
				free(n);
				return NULL;
			}
			parent->kids = nk;
			parent->capkids = cap;
		}
		parent->kids[parent->nkids++] = n;
	}
	n->parent = parent;
	n->dir = dir;
	if (fs->nfree > 0) {
		n->ino = fs->freeino[--fs->nfree];
		n->gen = ++fs->reuses;
	} else {
		n->ino = fs->nnodes++;
	}
	fs->nodes[n->ino] = n;
	return n;
}

static void node_destroy(struct node *n)
{
	if (n->s)
		stream_unref(n->s);
	free(n->kids);
	free(n->name);
	free(n->source);
	free(n);
}

/* Free @n if it is removed and nothing names it any more (see the top of
 * this file). Under fs->lock, written. */
static void node_release(struct fs *fs, struct node *n)
{
	if (!n->removed || __atomic_load_n(&n->nlookup, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&n->nopen, __ATOMIC_RELAXED))
		return;
	fs->nodes[n->ino] = NULL;
	fs->freeino[fs->nfree++] = n->ino;
	node_destroy(n);
}

/* The kernel dropped @count lookups of @ino (FORGET), or a lookup reply
 * did not reach it. Under fs->lock, written. */
static void node_forget(struct fs *fs, fuse_ino_t ino, uint64_t count)
{
	struct node *n = ino < fs->nnodes ? fs->nodes[ino] : NULL;
	if (!n || ino == FUSE_ROOT_ID)
		return;
	uint64_t have = __atomic_load_n(&n->nlookup, __ATOMIC_RELAXED);
	__atomic_store_n(&n->nlookup, count < have ? have - count : 0, __ATOMIC_RELAXED);
	node_release(fs, n);
}

/* An open handle of @n was closed. */
static void node_close(struct fs *fs, struct node *n)
{
	pthread_rwlock_wrlock(&fs->lock);
	__atomic_sub_fetch(&n->nopen, 1, __ATOMIC_RELAXED);
	node_release(fs, n);
	pthread_rwlock_unlock(&fs->lock);
}

static struct node *child(const struct node *dir, const char *name, size_t len)
{
	for (size_t i = 0; i < dir->nkids; i++)
		if (strlen(dir->kids[i]->name) == len && memcmp(dir->kids[i]->name, name, len) == 0)
			return dir->kids[i];
	return NULL;
}

/*
 * The node of @ino, and in *@s a new reference on its stream (NULL for a
 * directory). NULL if there is no such node or it was removed.
 */
static struct node *get_node(struct fs *fs, fuse_ino_t ino, struct stream **s)
{
	pthread_rwlock_rdlock(&fs->lock);
	struct node *n = ino < fs->nnodes ? fs->nodes[ino] : NULL;
	if (n && n->removed)
		n = NULL;
	*s = n && n->s ? stream_ref(n->s) : NULL;
	pthread_rwlock_unlock(&fs->lock);
	return n;
}

/* References on every stream (with @only >= 0: those of that start
 * policy), for walking them without the lock. Returns a malloc'ed array
 * (NULL-terminated), or NULL. */
static struct stream **all_streams(struct fs *fs, int only)
{
	pthread_rwlock_rdlock(&fs->lock);
	struct stream **v = calloc(fs->nnodes + 1, sizeof(*v));
	size_t k = 0;
	for (size_t i = 0; v && i < fs->nnodes; i++)
		if (fs->nodes[i] && fs->nodes[i]->s &&
		    (only < 0 || (int)fs->nodes[i]->start == only))
			v[k++] = stream_ref(fs->nodes[i]->s);
	pthread_rwlock_unlock(&fs->lock);
	return v;
}

static void unref_all(struct stream **v)
{
	for (size_t i = 0; v && v[i]; i++)
		stream_unref(v[i]);
	free(v);
}

struct fs *fs_new(void)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return NULL;
	const char *fe = getenv("STREAMFS_TEST_FAIL_ALLOC");
	fail_every = fe ? (unsigned)strtoul(fe, NULL, 10) : 0;
	clock_gettime(CLOCK_REALTIME, &fs->mtime);
	pthread_rwlock_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->hlock, NULL);
	fs->handles.next = fs->handles.prev = &fs->handles;
	fs->uid = getuid();
	fs->gid = getgid();
	/* Inode 0 is invalid in FUSE; 1 is the root. */
	if (!node_new(fs, NULL, "", true) || !node_new(fs, NULL, "", true)) {
		fs_free(fs);
		errno = ENOMEM;
		return NULL;
	}
	return fs;
}

int fs_add_file(struct fs *fs, const char *path, struct stream *s, const struct file_opts *opts,
		const char *source, char *err, size_t errlen)
{
	pthread_rwlock_wrlock(&fs->lock);
	struct node *dir = fs->nodes[FUSE_ROOT_ID];
	fuse_ino_t changed = FUSE_ROOT_ID;
	if (atomic_load(&fs->shut)) {
		snprintf(err, errlen, "the file system is being unmounted");
		goto fail;
	} /* the highest directory that gained an entry */
	bool made = false;
	const char *p = path;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		struct node *c = child(dir, p, len);
		if (!made)
			changed = dir->ino;
		if (!slash) {
			if (c) {
				snprintf(err, errlen, "duplicate name '%s'", path);
				goto fail;
			}
			struct node *n = node_new(fs, dir, p, false);
			if (!n || !(n->source = strdup(source))) {
				snprintf(err, errlen, "out of memory");
				goto fail;
			}
			n->s = s;
			n->size = opts->size;
			n->read = opts->read;
			n->start = opts->start;
			break;
		}
		if (c && !c->dir) {
			snprintf(err, errlen, "'%.*s' is both a file and a directory",
				 (int)(slash - path), path);
			goto fail;
		}
		if (!c) {
			char part[256];
			snprintf(part, sizeof(part), "%.*s", (int)len, p);
			c = node_new(fs, dir, part, true);
			if (!c) {
				snprintf(err, errlen, "out of memory");
				goto fail;
			}
			made = true;
		}
		dir = c;
		p = slash + 1;
	}
	pthread_rwlock_unlock(&fs->lock);
	/* Directory listings are cached (cache_readdir): drop the stale one. */
	if (fs->mounted)
		fuse_lowlevel_notify_inval_inode(fs->se, changed, 0, 0);
	return 0;
fail:
	pthread_rwlock_unlock(&fs->lock);
	stream_unref(s);
	return -1;
}

/* A removed node, as the kernel is told of it. */
struct gone {
	fuse_ino_t parent, ino;
	char *name;
};

static void gone_free(struct gone *v, size_t k)
{
	for (size_t i = 0; i < k; i++)
		free(v[i].name);
	free(v);
}

/* The file @n and the directories that only lead to it, deepest first,
 * with copies of their names. Under fs->lock. Returns their number, or 0
 * when out of memory. */
static size_t chain_of(struct node *n, struct gone **out)
{
	size_t k = 1;
	for (struct node *x = n->parent; x->ino != FUSE_ROOT_ID && x->nkids == 1; x = x->parent)
		k++;
	struct gone *v = calloc(k, sizeof(*v));
	if (!v)
		return 0;
	struct node *x = n;
	for (size_t i = 0; i < k; i++, x = x->parent) {
		v[i] = (struct gone){.parent = x->parent->ino, .ino = x->ino};
		if (!(v[i].name = strdup(x->name))) {
			gone_free(v, i);
			return 0;
		}
	}
	*out = v;
	return k;
}

int fs_remove(struct fs *fs, const char *path, char *err, size_t errlen)
{
	pthread_rwlock_wrlock(&fs->lock);
	struct node *n = fs->nodes[FUSE_ROOT_ID];
	const char *p = path;
	while (n) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		n = n->dir ? child(n, p, len) : NULL;
		if (!slash)
			break;
		p = slash + 1;
	}
	struct gone *v = NULL;
	size_t k = n && !n->dir ? chain_of(n, &v) : 0;
	if (!k) {
		pthread_rwlock_unlock(&fs->lock);
		if (n && !n->dir)
			snprintf(err, errlen, "out of memory");
		else
			snprintf(err, errlen, n ? "'%s' is a directory" : "no file named '%s'", path);
		return -1;
	}
	/* Unlink it, and the directories that only held it; free what the
	 * kernel never looked up (or has forgotten already). */
	struct stream *s = n->s;
	n->s = NULL;
	for (size_t i = 0; i < k; i++) {
		struct node *d = n->parent;
		for (size_t j = 0; j < d->nkids; j++) {
			if (d->kids[j] == n) {
				d->kids[j] = d->kids[--d->nkids];
				break;
			}
		}
		n->removed = true;
		n->parent = NULL;
		node_release(fs, n);
		n = d;
	}
	pthread_rwlock_unlock(&fs->lock);

	stream_cancel(s, "removed"); /* parked readers get EIO */
	stream_unref(s);             /* open handles keep theirs */
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
	gone_free(v, k);
	return 0;
}

static void handle_link(struct fs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->hlock);
	h->next = fs->handles.next;
	h->prev = &fs->handles;
	fs->handles.next->prev = h;
	fs->handles.next = h;
	pthread_mutex_unlock(&fs->hlock);
}

static void handle_unlink(struct fs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->hlock);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->hlock);
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	for (size_t i = 0; i < fs->nnodes; i++)
		if (fs->nodes[i])
			node_destroy(fs->nodes[i]);
	free(fs->nodes);
	free(fs->freeino);
	while (fs->handles.next != &fs->handles) {
		struct handle *h = fs->handles.next;
		handle_unlink(fs, h);
		stream_unref(h->s);
		free(h);
	}
	if (fs->se)
		fuse_session_destroy(fs->se);
	pthread_rwlock_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->hlock);
	free(fs);
}

/* ---- attributes ------------------------------------------------------- */

/* What stat shows: the exact size once complete, else the announced
 * length, else the bytes so far (never decreasing). */
static uint64_t shown_size(const struct stream_info *in)
{
	return in->length >= 0 ? (uint64_t)in->length : in->frontier;
}

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

static void reply_attr(fuse_req_t req, struct fs *fs, const struct node *n, struct stream *s)
{
	struct stat st;
	double t = fill_attr(fs, n, s, &st);
	fuse_reply_attr(req, &st, t);
}

/* ---- parked requests -------------------------------------------------- */

static int reply_errno(ssize_t r)
{
	/* EFBIG: past what the store can hold; ENODATA: dropped by keep= */
	if (r == -EINTR || r == -EFBIG || r == -ENODATA)
		return (int)-r;
	return EIO; /* cancelled (unmount, rm) reads see EIO */
}

static void park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s,
		 enum pending_op op, enum stream_wait_kind kind, uint64_t off, size_t len,
		 const struct fuse_file_info *fi);

/*
 * Reply buffers, one per thread that replies (FUSE workers, the I/O
 * thread). Replies are copied out of the store with pread rather than
 * served from a mapping: measured faster here (2.4 vs 1.4 GB/s) and the
 * daemon's RSS stays flat instead of growing with every byte served.
 */
static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
#define REPLY_BUF (1u << 20) /* the largest FUSE read request */

static void buf_key_init(void)
{
	pthread_key_create(&buf_key, free);
}

/* Reply with the present bytes [off, off+len). Returns 0 when replied, or
 * -ERANGE (not all present) / -errno without replying. */
static int reply_present(fuse_req_t req, struct stream *s, uint64_t off, size_t len)
{
	pthread_once(&buf_once, buf_key_init);
	char *buf = pthread_getspecific(buf_key);
	bool own = false;
	if (len > REPLY_BUF) {
		buf = req_alloc(len);
		own = true;
	} else if (!buf) {
		buf = req_alloc(REPLY_BUF);
		if (buf && pthread_setspecific(buf_key, buf) != 0)
			own = true;
	}
	if (!buf)
		return -ENOMEM;
	int r = stream_copy(s, buf, len, off);
	if (r == 0)
		fuse_reply_buf(req, buf, len);
	if (own)
		free(buf);
	return r;
}

static void reply_read(struct pending *p, ssize_t r)
{
	fuse_req_t req = p->req;
	struct stream *s = p->s;
	uint64_t off = p->w.off;
	if (r < 0) {
		fuse_reply_err(req, reply_errno(r));
		return;
	}
	if (r == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	int e = reply_present(req, s, off, (size_t)r);
	if (e == -ERANGE) {
		/* Evicted between the wake-up and this copy: wait again (the
		 * stream fetches it again). */
		park(req, p->fs, p->n, s, P_READ, p->w.kind, off, p->w.len, NULL);
	} else if (e == -ENOMEM) {
		fuse_reply_err(req, ENOMEM);
	} else if (e < 0) {
		log_error("%s: read of present bytes at %" PRIu64 " failed: %s", stream_name(s),
			  off, strerror(-e));
		fuse_reply_err(req, EIO);
	}
}

static void reply_open(struct pending *p, ssize_t r)
{
	if (r < 0) {
		fuse_reply_err(p->req, reply_errno(r));
		return;
	}
	struct handle *h = req_alloc(sizeof(*h));
	if (!h) {
		fuse_reply_err(p->req, ENOMEM);
		return;
	}
	h->n = p->n;
	h->s = stream_ref(p->s);
	__atomic_add_fetch(&h->n->nopen, 1, __ATOMIC_RELAXED);
	handle_link(p->fs, h);
	struct stream_info in;
	stream_get_info(p->s, &in);
	p->fi.fh = (uintptr_t)h;
	if (in.state == STREAM_COMPLETE) {
		p->fi.keep_cache = 1;
		p->fi.direct_io = 0;
	} else {
		p->fi.keep_cache = 0;
		p->fi.direct_io = 1;
	}
	if (fuse_reply_open(p->req, &p->fi) < 0) {
		/* The opener is gone (interrupted): no release will come. */
		handle_unlink(p->fs, h);
		stream_unref(h->s);
		node_close(p->fs, h->n);
		free(h);
	}
}

/* Answer @p with result @r and free it. No stream lock is held. */
static void pending_complete(struct pending *p, ssize_t r)
{
	/* Disarm the interrupt callback first: this waits for one that is
	 * running, which has found (through stream_unwait) that @p is ours. */
	fuse_req_interrupt_func(p->req, NULL, NULL);
	switch (p->op) {
	case P_READ:
		reply_read(p, r);
		break;
	case P_OPEN:
		reply_open(p, r);
		break;
	case P_GETATTR:
		/* A stat of a failed stream still works; one woken by unmount or
		 * rm (cancelled) fails like every other waiter. */
		if (r == -EINTR || r == -ECANCELED || (p->with_fh && r < 0))
			fuse_reply_err(p->req, reply_errno(r));
		else
			reply_attr(p->req, p->fs, p->n, p->s); /* stat of a failed stream still works */
		break;
	}
	stream_unref(p->s);
	free(p);
}

static void pending_done(struct stream_waiter *w, ssize_t r)
{
	pending_complete(w->data, r);
}

static void pending_interrupt(fuse_req_t req, void *data)
{
	struct pending *p = data;
	if (!stream_unwait(p->s, &p->w))
		return; /* being completed, or not parked yet (stream_wait says EINTR) */
	fuse_reply_err(req, EINTR);
	stream_unref(p->s);
	free(p);
}

/* Park @req on @n's stream until @kind/@off/@len holds, or answer now. */
static void park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s,
		 enum pending_op op, enum stream_wait_kind kind, uint64_t off, size_t len,
		 const struct fuse_file_info *fi)
{
	struct pending *p = req_alloc(sizeof(*p));
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	stream_waiter_init(&p->w);
	p->w.kind = kind;
	p->w.off = off;
	p->w.len = len;
	p->w.done = pending_done;
	p->w.data = p;
	p->req = req;
	p->fs = fs;
	p->n = n;
	p->s = stream_ref(s);
	p->op = op;
	p->with_fh = fi != NULL;
	if (fi)
		p->fi = *fi;
	/* Armed before parking: an interrupt that comes in between is seen by
	 * stream_wait() as -EINTR instead of being lost. */
	fuse_req_interrupt_func(req, pending_interrupt, p);
	ssize_t r = stream_wait(s, &p->w);
	if (r != STREAM_PARKED)
		pending_complete(p, r);
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
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fuse_req_userdata(req);
	pthread_rwlock_rdlock(&fs->lock);
	struct node *d = parent < fs->nnodes ? fs->nodes[parent] : NULL;
	bool isdir = d && d->dir && !d->removed;
	struct node *n = isdir ? child(d, name, strlen(name)) : NULL;
	struct stream *s = n && n->s ? stream_ref(n->s) : NULL;
	if (n) /* counted before the reply: the kernel may forget it at once */
		__atomic_add_fetch(&n->nlookup, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&fs->lock);
	if (!n) {
		fuse_reply_err(req, isdir || !d ? ENOENT : ENOTDIR);
		return;
	}
	fuse_ino_t ino = n->ino;
	if (reply_entry(req, fs, n, s) != 0) { /* starts nothing: ls stays cheap */
		pthread_rwlock_wrlock(&fs->lock);
		node_forget(fs, ino, 1);
		pthread_rwlock_unlock(&fs->lock);
	}
	if (s)
		stream_unref(s);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct fs *fs = fuse_req_userdata(req);
	pthread_rwlock_wrlock(&fs->lock);
	node_forget(fs, ino, nlookup);
	pthread_rwlock_unlock(&fs->lock);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *fs = fuse_req_userdata(req);
	pthread_rwlock_wrlock(&fs->lock);
	for (size_t i = 0; i < count; i++)
		node_forget(fs, forgets[i].ino, forgets[i].nlookup);
	pthread_rwlock_unlock(&fs->lock);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = get_node(fs, ino, &s);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (n->dir) {
		reply_attr(req, fs, n, NULL);
		return;
	}
	stream_start(s);
	enum stream_wait_kind kind = fi || n->size == SIZE_WAIT ? STREAM_WAIT_END : STREAM_WAIT_SIZE;
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
	struct node *n = get_node(fs, ino, &s);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
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
	int r = reply_present(req, h->s, (uint64_t)off, size);
	if (r == 0)
		return;
	if (r != -ERANGE) {
		fuse_reply_err(req, -r == ENOMEM ? ENOMEM : EIO);
		return;
	}
	park(req, fs, h->n, h->s, P_READ,
	     h->n->read == READ_PARTIAL ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE, (uint64_t)off, size,
	     NULL);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	handle_unlink(fs, h);
	stream_unref(h->s);
	node_close(fs, h->n);
	free(h);
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = get_node(fs, ino, &s);
	if (s)
		stream_unref(s);
	if (!n || !n->dir) {
		fuse_reply_err(req, n ? ENOTDIR : ENOENT);
		return;
	}
	fi->cache_readdir = 1; /* add/rm invalidate it */
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fuse_req_userdata(req);
	char *buf = req_alloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_rwlock_rdlock(&fs->lock);
	struct node *d = ino < fs->nnodes ? fs->nodes[ino] : NULL;
	if (!d || !d->dir || d->removed) {
		pthread_rwlock_unlock(&fs->lock);
		free(buf);
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	size_t used = 0;
	for (size_t i = (size_t)off; i < d->nkids + 2; i++) {
		const struct node *n = i == 0 ? d : i == 1 ? (d->parent ? d->parent : d) : d->kids[i - 2];
		const char *name = i == 0 ? "." : i == 1 ? ".." : n->name;
		struct stat st;
		memset(&st, 0, sizeof(st));
		st.st_ino = n->ino;
		st.st_mode = n->dir ? S_IFDIR : S_IFREG;
		size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	pthread_rwlock_unlock(&fs->lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

/* ---- status as extended attributes ------------------------------------ */

#define XATTR_PREFIX "user.streamfs."

static const char *const file_keys[] = {"state", "bytes", "size", "source", "kind",
				       "error", "error_offset", "waiters", "held", "evicted",
				       "dropped", "keep", "paused", NULL};

/* The value of file attribute @key into @buf; its length, or -ENODATA. */
static ssize_t file_xattr(const struct node *n, struct stream *s, const char *key, char *buf,
			  size_t size)
{
	struct stream_info in;
	stream_get_info(s, &in);
	bool failed = in.state == STREAM_FAILED || in.state == STREAM_CANCELLED;
	if (strcmp(key, "state") == 0)
		return snprintf(buf, size, "%s", stream_state_name(in.state));
	if (strcmp(key, "bytes") == 0)
		return snprintf(buf, size, "%" PRIu64, in.bytes);
	if (strcmp(key, "size") == 0)
		return in.length >= 0 ? snprintf(buf, size, "%" PRId64, in.length) : -ENODATA;
	if (strcmp(key, "source") == 0)
		return snprintf(buf, size, "%s", n->source);
	if (strcmp(key, "kind") == 0)
		return snprintf(buf, size, "%s", stream_kind(s));
	if (strcmp(key, "error") == 0)
		return failed ? snprintf(buf, size, "%s", in.error_msg) : -ENODATA;
	if (strcmp(key, "error_offset") == 0)
		return failed ? snprintf(buf, size, "%" PRIu64, in.error_offset) : -ENODATA;
	if (strcmp(key, "waiters") == 0) /* parked reads, opens and stats */
		return snprintf(buf, size, "%u", in.waiters);
	if (strcmp(key, "held") == 0) /* bytes in the store now */
		return snprintf(buf, size, "%" PRIu64, in.held);
	if (strcmp(key, "evicted") == 0)
		return in.evicted ? snprintf(buf, size, "%" PRIu64, in.evicted) : -ENODATA;
	if (strcmp(key, "dropped") == 0)
		return in.keep ? snprintf(buf, size, "%" PRIu64, in.dropped) : -ENODATA;
	if (strcmp(key, "keep") == 0)
		return in.keep ? snprintf(buf, size, "%" PRIu64, in.keep) : -ENODATA;
	if (strcmp(key, "paused") == 0)
		return in.paused ? snprintf(buf, size, "%s", cache_pause_text(in.paused))
				 : -ENODATA;
	return stream_get_attr(s, key, buf, size);
}

static ssize_t cache_xattr(struct fs *fs, const char *key, char *buf, size_t size)
{
	struct cache_stats st;
	if (!fs->cache)
		return -ENODATA;
	cache_get_stats(fs->cache, &st);
	if (strcmp(key, "cache_size") == 0)
		return st.limit ? snprintf(buf, size, "%" PRIu64, st.limit) : -ENODATA;
	if (strcmp(key, "cache_used") == 0)
		return snprintf(buf, size, "%" PRIu64, st.used);
	if (strcmp(key, "cache_min_free") == 0)
		return snprintf(buf, size, "%" PRIu64, st.min_free);
	if (strcmp(key, "cache_evictions") == 0)
		return snprintf(buf, size, "%" PRIu64, st.evictions);
	if (strcmp(key, "cache_paused") == 0)
		return snprintf(buf, size, "%u", st.paused);
	return -ENODATA;
}

static ssize_t root_xattr(struct fs *fs, const char *key, char *buf, size_t size)
{
	if (strncmp(key, "cache_", 6) == 0)
		return cache_xattr(fs, key, buf, size);
	if (strcmp(key, "pid") == 0)
		return snprintf(buf, size, "%d", (int)getpid());
	if (strcmp(key, "control") == 0 && fs->control[0])
		return snprintf(buf, size, "%s", fs->control);
	if (strcmp(key, "version") == 0)
		return snprintf(buf, size, "%s", STREAMFS_VERSION);
	return -ENODATA;
}

/*
 * The value of @key of @n, malloc'ed in *@out; its length or -errno.
 * Sized from the value's real length (a command can be 60 KB), asked
 * again if it grew in between (stderr). The kernel carries at most
 * XATTR_SIZE_MAX bytes: longer values are cut there, so getxattr still
 * shows their start instead of failing with E2BIG.
 */
#define XATTR_VALUE_MAX 65536

static ssize_t xattr_value(struct fs *fs, const struct node *n, struct stream *s,
			   const char *key, char **out)
{
	size_t cap = 256;
	for (;;) {
		char *buf = req_alloc(cap);
		if (!buf)
			return -ENOMEM;
		ssize_t len = n->dir ? root_xattr(fs, key, buf, cap) : file_xattr(n, s, key, buf, cap);
		if (len >= 0 && (size_t)len >= cap) {
			free(buf);
			cap = (size_t)len + 1;
			continue;
		}
		if (len < 0) {
			free(buf);
			return len;
		}
		*out = buf;
		return len > XATTR_VALUE_MAX ? XATTR_VALUE_MAX : len;
	}
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = get_node(fs, ino, &s);
	if (!n || strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX)) != 0 ||
	    (n->dir && ino != FUSE_ROOT_ID)) {
		if (s)
			stream_unref(s);
		fuse_reply_err(req, n ? ENODATA : ENOENT);
		return;
	}
	const char *key = name + strlen(XATTR_PREFIX);
	char *buf = NULL;
	ssize_t len = xattr_value(fs, n, s, key, &buf);
	if (s)
		stream_unref(s);
	if (len < 0)
		fuse_reply_err(req, (int)-len);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else if ((size_t)len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, (size_t)len);
	free(buf);
}

struct namebuf {
	char buf[2048];
	size_t len;
};

static void add_name(const char *key, void *arg)
{
	struct namebuf *nb = arg;
	int n = snprintf(nb->buf + nb->len, sizeof(nb->buf) - nb->len, XATTR_PREFIX "%s", key);
	if (n > 0 && nb->len + (size_t)n + 1 <= sizeof(nb->buf))
		nb->len += (size_t)n + 1; /* keep the NUL as separator */
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = get_node(fs, ino, &s);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct namebuf nb = {.len = 0};
	char tmp[8];
	if (ino == FUSE_ROOT_ID) {
		add_name("pid", &nb);
		add_name("version", &nb);
		if (fs->control[0])
			add_name("control", &nb);
		static const char *const ck[] = {"cache_size", "cache_used", "cache_min_free",
						 "cache_evictions", "cache_paused", NULL};
		for (int i = 0; ck[i]; i++)
			if (cache_xattr(fs, ck[i], tmp, sizeof(tmp)) >= 0)
				add_name(ck[i], &nb);
	} else if (s) {
		for (int i = 0; file_keys[i]; i++)
			if (file_xattr(n, s, file_keys[i], tmp, sizeof(tmp)) >= 0)
				add_name(file_keys[i], &nb);
		stream_list_attrs(s, add_name, &nb);
		stream_unref(s);
	}
	if (size == 0)
		fuse_reply_xattr(req, nb.len);
	else if (nb.len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, nb.buf, nb.len);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fuse_req_userdata(req);
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	uint64_t bytes = 0;
	struct stream **v = all_streams(fs, -1);
	size_t files = 0;
	for (size_t i = 0; v && v[i]; i++, files++) {
		struct stream_info in;
		stream_get_info(v[i], &in);
		bytes += in.held;
	}
	unref_all(v);
	sv.f_bsize = BLKSIZE;
	sv.f_frsize = 4096;
	sv.f_blocks = (bytes + 4095) / 4096;
	sv.f_files = files;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
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
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
};

/* ---- session ---------------------------------------------------------- */

/* libfuse reports problems through its logger; keep the last message so a
 * failed mount can say why in one line of our own. */
static char fuse_last_msg[512];

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
	snprintf(fuse_last_msg, sizeof(fuse_last_msg), "%s", clean);
	log_debug("libfuse: %s", msg);
}

int fs_mount(struct fs *fs, const char *mountpoint, char *const *fuse_opts, char *err,
	     size_t errlen)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	int r = -1;
	fuse_set_log_func(fuse_logger);
	fuse_last_msg[0] = '\0';
	if (fuse_opt_add_arg(&args, "streamfs") ||
	    fuse_opt_add_arg(&args, "-oro,auto_unmount,fsname=streamfs,"
				    "subtype=streamfs"))
		goto out;
	for (size_t i = 0; fuse_opts && fuse_opts[i]; i++)
		if (fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, fuse_opts[i]))
			goto out;
	/* Last, so that it wins: libfuse applies ro/rw in order, and mount(8)
	 * passes "rw" for fstab's "defaults". A later "rw" is ignored, not
	 * refused: the mount is read-only whatever -o says. */
	if (fuse_opt_add_arg(&args, "-oro"))
		goto out;
	fs->se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	if (!fs->se) {
		snprintf(err, errlen, "bad mount options: %s",
			 fuse_last_msg[0] ? fuse_last_msg : "rejected by libfuse");
		goto out;
	}
	if (fuse_session_mount(fs->se, mountpoint) != 0) {
		snprintf(err, errlen, "cannot mount on '%s': %s", mountpoint,
			 fuse_last_msg[0] ? fuse_last_msg : "mount failed");
		goto out;
	}
	fs->mounted = true;
	r = 0;
out:
	fuse_opt_free_args(&args);
	return r;
}

void fs_set_cache(struct fs *fs, struct cache *ca)
{
	fs->cache = ca;
}

void fs_set_control_name(struct fs *fs, const char *name)
{
	snprintf(fs->control, sizeof(fs->control), "%s", name);
}

void fs_start_mount_streams(struct fs *fs)
{
	/* Starting hands work to the I/O thread: not under the tree lock. */
	struct stream **v = all_streams(fs, START_MOUNT);
	for (size_t i = 0; v && v[i]; i++)
		stream_start(v[i]);
	unref_all(v);
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
	/* Under the tree lock: an add that got in before sees its stream
	 * cancelled below, one that comes after is refused. */
	pthread_rwlock_wrlock(&fs->lock);
	bool was = atomic_exchange(&fs->shut, true);
	pthread_rwlock_unlock(&fs->lock);
	if (was)
		return;
	/* Every parked request is answered (EIO) by the cancel itself. */
	struct stream **v = all_streams(fs, -1);
	for (size_t i = 0; v && v[i]; i++)
		stream_cancel(v[i], "streamfs is shutting down");
	unref_all(v);
	source_cmd_kill_all();
	if (!source_wait_all_done(5000))
		log_warn("some sources did not stop within 5 s");
	if (fs->mounted) {
		fuse_session_unmount(fs->se);
		fs->mounted = false;
	}
}
