/*
 * fs_int.h - what the pieces of the FUSE layer share; private to src/fuse.
 *
 *   fs.c       the FUSE operations: translate each request to the engine
 *   tree.c     the tree of nodes: add, remove, lookup, inode numbers and
 *              their reuse, forget counting, open handles
 *   park.c     requests that wait: park on a stream, the interrupt race,
 *              the replies that answer them
 *   push.c     what direct_io readers were sent, stored in the page cache
 *              once the stream is complete (a thread of its own)
 *   passthrough.c  complete streams read by the kernel straight from the
 *              store (FUSE passthrough), under libfuse's custom I/O
 *   attrs.c    status as extended attributes (user.streamfs.*)
 *   session.c  the FUSE session: new/free, mount, loop, shutdown, and the
 *              notifications that tell the kernel of add and rm
 *
 * Locks, in the order they are taken (none is held across a reply, a
 * notification or a stream callback, except where said):
 *   fs->lock        (read-write) the tree: node table, kids, node->s,
 *                   node->removed. Every request reads, add/rm/forget write.
 *   fs->plock       the list of parked requests
 *   fs->pt_lock     nodes' open modes and backing files (passthrough.c);
 *                   a stream's lock and fs->mount_lock are taken under it
 *   a stream's lock (in stream.c)
 *   fs->hlock       the list of open handles (a leaf)
 *   fs->push_lock   the handles adopted by push.c (a leaf)
 *   fs->mount_lock  fs->mounted and the session's device: held across a
 *                   notification, so unmounting cannot close the device
 *                   under it (a leaf: nothing else is taken under it)
 * A libfuse request's own lock (taken by fuse_req_interrupt_func and held
 * while an interrupt callback runs) comes before fs->plock.
 */
#ifndef STREAMFS_FS_INT_H
#define STREAMFS_FS_INT_H

#define FUSE_USE_VERSION 312

#include "fs.h"
#include "vector.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>
#include <time.h>

#define BLKSIZE (1 << 20)
#define ENTRY_TIMEOUT 1.0

struct node;
DEFINE_VECTOR(nodevec, struct node *);
DEFINE_VECTOR(inovec, fuse_ino_t);
DEFINE_VECTOR(idvec, int32_t);

struct node {
	fuse_ino_t ino;
	char *name;
	struct node *parent; /* NULL once removed */
	uint64_t gen;        /* the inode's generation: bumped when a number is reused */
	uint64_t nlookup;    /* lookups the kernel holds; atomic, and only under fs->lock */
	unsigned nopen;      /* open handles; atomic, and only under fs->lock */
	bool dir;
	bool removed;        /* protected by fs->lock */
	struct nodevec kids; /* dir; protected by fs->lock */
	struct stream *s;    /* file; protected by fs->lock (NULL once removed) */
	/* passthrough.c, under fs->pt_lock: opens of the complete stream read
	 * straight from the store, opens in page-cache mode and direct_io
	 * opens (the kernel refuses to mix the first with the others), and
	 * the store's registration as backing file (0: none; kept for the
	 * node's life). */
	unsigned pt_opens, cached_opens, direct_opens;
	int32_t backing_id;
	/* Set when the node is made, then read-only. */
	enum size_policy size;
	enum read_policy read;
	enum start_policy start;
	char *source;
};

/* How a file was opened (passthrough.c). */
enum handle_mode {
	H_NONE,        /* not a file the kernel has open (push.c's own), or released */
	H_DIRECT,      /* direct_io: the stream was still running */
	H_CACHED,      /* complete, through the page cache and this daemon */
	H_PASSTHROUGH, /* complete, read by the kernel from the store */
};

/* An open file. */
struct handle {
	struct node *n;
	struct stream *s;         /* a reference */
	TAILQ_ENTRY(handle) link; /* on fs->handles, under fs->hlock */
	/* Read-ahead for random access (URL sources): reads that follow on
	 * from the previous one double the window (1 MiB up to 64 MiB); a
	 * jump starts it again. Updated with relaxed atomics: the kernel may
	 * send reads of one file handle in parallel, and a lost update only
	 * makes one window a little smaller. */
	uint64_t next_off;
	uint64_t window;
	/* The stream's length when it was opened (0 or -1: not known), for
	 * the window's jump to the end: read without taking the stream lock
	 * on every jump. Open waits for the length where there is one. */
	int64_t length;
	/* Opened direct_io: what is read through it is noted, and stored in
	 * the kernel's page cache once the stream is complete (push.c), so a
	 * later open of the complete file reads from there. Set at open, then
	 * read-only. */
	bool push;
	enum handle_mode mode;    /* set at open, then read-only until the release */
	struct handle *push_next; /* adopted by push.c: under fs->push_lock */
	uint64_t push_budget;     /* adopted: bytes it may still push (push.c's thread) */
};
TAILQ_HEAD(handle_list, handle);

enum pending_op { P_READ, P_OPEN, P_GETATTR };

/* A request parked on a stream (park.c). */
struct pending {
	struct stream_waiter w;
	fuse_req_t req;
	struct fs *fs;
	struct node *n;
	struct stream *s; /* a reference */
	enum pending_op op;
	bool with_fh; /* P_GETATTR: carried a file handle */
	bool push;    /* P_READ: through a handle that notes what it sent (struct handle) */
	struct fuse_file_info fi;   /* P_OPEN */
	TAILQ_ENTRY(pending) link;  /* on fs->parked, under fs->plock */
	atomic_bool answered;       /* claimed by the one party that answers */
	TAILQ_ENTRY(pending) qlink; /* on fs->replies, under fs->reply_lock (replier.c) */
	ssize_t result;             /* what it is answered with, once queued there */
};
TAILQ_HEAD(pending_list, pending);

struct fs {
	struct fuse_session *se; /* set by fs_mount, before any request */
	pthread_rwlock_t lock;   /* the tree: see the top of this file */
	struct nodevec nodes;    /* by inode number (NULL: free); [FUSE_ROOT_ID] is the root */
	struct inovec freeino;   /* numbers of freed nodes, to reuse; cap >= nodes.len */
	uint64_t reuses;         /* numbers reused so far: the next generation */
	/* Set before the request loop starts, then read-only. */
	struct timespec mtime;
	uid_t uid;
	gid_t gid;
	char control[108];   /* the control socket's name (fs_set_control_name) */
	struct cache *cache; /* the store budget, shown on the root (fs_set_cache); may be NULL */

	atomic_bool shut; /* fs_shutdown() has begun: no file is added, no request parked */

	/* The mount's read-ahead file in sysfs (set by fs_mount, or empty),
	 * written once by the first request after INIT (session_after_init). */
	char readahead[128];
	atomic_bool readahead_done;

	pthread_mutex_t mount_lock;
	bool mounted; /* protected by mount_lock */

	/* passthrough.c: the kernel takes backing files (set once INIT is
	 * answered; cleared if a registration is refused), the lock of the
	 * nodes' open modes, and whether the store has a size budget (then
	 * complete streams may not stay whole in it; set before the loop). */
	atomic_bool passthrough;
	pthread_mutex_t pt_lock;
	bool cache_bounded;
	struct idvec pt_closing; /* backing ids of freed nodes, to close (under pt_lock) */

	/* Open handles, so those the kernel never released (the daemon stops
	 * first) are freed with the file system. */
	pthread_mutex_t hlock;
	struct handle_list handles;

	/* Parked requests, so fs_shutdown() can answer them and wait for
	 * every reply on its way before it closes the device. */
	pthread_mutex_t plock;
	struct pending_list parked;
	pthread_cond_t drained; /* signalled when parked becomes empty */

	/* push.c: released direct_io handles whose sent ranges are still to
	 * be stored in the page cache, and the thread that does it (started
	 * by the first one). */
	pthread_mutex_t push_lock;
	pthread_cond_t push_cond;
	struct handle *push_jobs; /* linked by push_next */
	bool push_started;
	bool push_kick; /* a round is wanted now (a release): do not sleep; under push_lock */
	atomic_bool push_stop;
	pthread_t push_thread;

	/* replier.c: woken reads whose replies its thread sends. */
	pthread_mutex_t reply_lock;
	pthread_cond_t reply_cond;
	struct pending_list replies; /* linked by qlink */
	enum { REPLY_NONE, REPLY_RUNNING, REPLY_FAILED, REPLY_STOPPED } reply_state;
	pthread_t reply_thread;
};

/* ---- fs.c ---- */

extern const struct fuse_lowlevel_ops fs_ops;

/* Every allocation a request makes goes through here (calloc), so tests
 * can make them fail (STREAMFS_TEST_FAIL_ALLOC=N: every Nth one).
 * req_alloc_init() reads the environment once, before any request. */
void req_alloc_init(void);
void *req_alloc(size_t n);

/* Reply to @req with the attributes of @n (@s its stream, NULL for a
 * directory). */
void reply_attr(fuse_req_t req, struct fs *fs, const struct node *n, struct stream *s);

/* The live node of @ino and in *@s a new reference on its stream (NULL
 * for a directory); without one, replies ENOENT and returns NULL. */
struct node *req_node(fuse_req_t req, struct fs *fs, fuse_ino_t ino, struct stream **s);

/* ---- tree.c ---- */

/* The root and inode 0 (invalid in FUSE). Returns 0, or -1 (ENOMEM). */
int tree_init(struct fs *fs);
/* Free every node. Nothing else may use the tree. */
void tree_free(struct fs *fs);

/* As req_node(), but without a reply: NULL if there is no such node or it
 * was removed. */
struct node *tree_get(struct fs *fs, fuse_ino_t ino, struct stream **s);
/* tree_get(), but a removed node still open answers too, with the stream
 * of one of its handles (a stat of an open file after rm). */
struct node *tree_get_open(struct fs *fs, fuse_ino_t ino, struct stream **s);

/*
 * The child @name of directory @parent, with one more lookup counted (the
 * kernel's, given before the reply: it may forget it at once) and in *@s
 * a new reference on its stream. NULL with *@err ENOENT or ENOTDIR.
 */
struct node *tree_lookup(struct fs *fs, fuse_ino_t parent, const char *name, struct stream **s,
                         int *err);

/* The kernel dropped @n lookups (FORGET), or a lookup reply did not reach
 * it: removed nodes nothing names any more are freed. */
void tree_forget(struct fs *fs, const struct fuse_forget_data *forgets, size_t n);

/*
 * Call @fn for the entries of directory @ino (".", "..", then the
 * children; entry i is followed by offset i + 1) from @off on, until it
 * returns false. Under the tree lock: @fn must not block. Returns 0, or
 * -ENOTDIR if @ino is not a live directory.
 */
typedef bool (*tree_list_fn)(void *arg, const char *name, fuse_ino_t ino, bool dir, off_t next);
int tree_list(struct fs *fs, fuse_ino_t ino, off_t off, tree_list_fn fn, void *arg);

/* References on every file's stream (with @only >= 0: those of that start
 * policy), for walking them without the lock: a NULL-terminated array, or
 * NULL without memory. Free with fs_streams_free(). */
struct stream **tree_streams(struct fs *fs, int only);

/* A new open handle of @n on (a new reference of) @s, or NULL (ENOMEM). */
struct handle *handle_new(struct fs *fs, struct node *n, struct stream *s);
/* Close @h: the node may be freed if it was removed. */
void handle_free(struct fs *fs, struct handle *h);
/* Free the handles the kernel never released. */
void handles_free_all(struct fs *fs);

/* ---- park.c ---- */

/* Park @req on @s (the stream of @n) until @kind/@off/@len holds, or
 * answer now. @fi: P_OPEN's file info, or P_GETATTR's file handle. */
void park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s, enum pending_op op,
          enum stream_wait_kind kind, uint64_t off, size_t len, const struct fuse_file_info *fi);
/* park() for a read through @h. */
void park_read(fuse_req_t req, struct fs *fs, struct handle *h, enum stream_wait_kind kind,
               uint64_t off, size_t len);

/* Answer @p, woken by its stream with @r and handed to replier.c, and
 * release it. */
void pending_answer(struct pending *p, ssize_t r);

/* Reply with the present bytes [off, off+len). Returns 0 when replied, or
 * -ERANGE (not all present) / -errno without replying. */
int reply_present(fuse_req_t req, struct stream *s, uint64_t off, size_t len, bool push);
/* Give the calling thread its reply buffer now (the reply thread, at its
 * start); reply_present() otherwise does at the first reply. */
void reply_buf_warm(void);

/* Answer every parked request with EIO, and wait until the replies of
 * those being answered by others have been sent. After fs->shut is set,
 * so none parks after. Returns how many were answered here. */
size_t park_wake_all(struct fs *fs);

/* ---- push.c ---- */

/* The release of @h, a handle that noted what it sent: push.c frees it once
 * its stream's noted ranges are in the page cache (or will never be). */
void push_adopt(struct fs *fs, struct handle *h);
/* Stop the thread (at shutdown, after park_wake_all()); the handles it still
 * holds are freed with the others. Idempotent. */
void push_stop(struct fs *fs);

/* ---- replier.c ---- */

/* Hand @p, woken with @r (> 0 bytes of a read), to the reply thread: true
 * if it took it (it answers @p), false if the caller must answer it. */
bool replier_take(struct fs *fs, struct pending *p, ssize_t r);

/* Would a woken read of @s be handed to the thread, which has not started
 * yet? Then the read that parks starts it (replier_start()), so that the
 * start overlaps the wait. Starting twice is harmless. */
bool replier_wanted(struct fs *fs, struct stream *s);
void replier_start(struct fs *fs);

/* Stop the reply thread once every reply handed to it is sent (from
 * fs_shutdown(), after park_wake_all(), and fs_free()); later ones are
 * answered by their wakers. */
void replier_stop(struct fs *fs);

/* ---- passthrough.c ---- */

/* Route libfuse's messages through passthrough.c (after the mount, before
 * the loop). Returns 0, or -errno (the mount then works without it). */
int passthrough_install(struct fs *fs);
/* Called from INIT's handler: the reply this thread sends next is INIT's. */
void passthrough_init_reply_next(void);
/* Decide how @h (new, on its node and stream) is opened, with the
 * stream's state read at that moment into @in: direct_io if it is not
 * complete, else read straight from the store if the kernel, the stream
 * and the node's other open files allow it (the open reply this thread
 * sends next is then made a passthrough one), else through the page
 * cache. h->mode says which. */
void passthrough_open(struct fs *fs, struct handle *h, struct stream_info *in);
/* Will a complete file of this stream be read straight from the store
 * (if its bytes are all there then)? If so, nothing need be pushed into
 * the page cache for it (push.c). */
bool passthrough_expected(struct fs *fs, const struct stream_info *in);
/* The open reply was sent (or failed): nothing more to patch. */
void passthrough_sent(void);
/* @h is released (or its open failed): undo what passthrough_open() held. */
void passthrough_release(struct fs *fs, struct handle *h);
/* Files of @n open for passthrough now. */
unsigned passthrough_count(struct fs *fs, const struct node *n);
/* @n is freed: its backing file is let go of at the next open or
 * release (not here: this runs under fs->lock, and the device is used
 * under fs->mount_lock, which a notification holds while the kernel may
 * wait for a lookup that needs fs->lock). Under fs->lock, written. */
void passthrough_forget_node(struct fs *fs, struct node *n);

/* ---- attrs.c ---- */

void attrs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void attrs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

/* ---- session.c ---- */

/* A removed node, as the kernel is told of it. */
struct gone {
	fuse_ino_t parent, ino;
	char *name;
};

/* Raise the mount's read-ahead, once; called by the first requests after
 * INIT (lookup, getattr), which come only once INIT's reply is processed. */
void session_after_init(struct fs *fs);

/* If mounted: directory @ino's cached listing is stale. */
void session_inval_dir(struct fs *fs, fuse_ino_t ino);
/* If mounted: the @k nodes of @v (deepest first) left their directories,
 * and the listing of the last one's parent is stale. */
void session_notify_gone(struct fs *fs, const struct gone *v, size_t k);

#endif
