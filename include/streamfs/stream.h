/*
 * stream.h - a byte stream filled in the background, read at any offset.
 *
 * A stream is the "async buffer" of streamfs. A source (command, FIFO, URL,
 * or a scripted fake in the unit tests) pushes bytes into it; readers ask for
 * byte ranges and either get them at once or are parked until the range is
 * present, the stream ends, or it fails. The stream knows nothing of FUSE:
 * a parked read is a struct stream_waiter whose done() callback the FUSE
 * layer turns into a reply.
 *
 * The contract (docs/DESIGN.md, section 2), as this module keeps it:
 *  - A read whose whole range is present is answered at once, whatever the
 *    producer is doing (S2).
 *  - A read whose range is not present waits until it is, or until the
 *    stream ends (short count at the end, 0 at or past it) or fails at E
 *    (short count up to E, -EIO for a read starting at or past E) (S3, S4).
 *  - The failure offset is the byte where the sequential fill stopped, to
 *    the byte; stream_get_info() shows it the moment stream_fail() returns.
 *  - A stream shorter than its announced length fails where it stopped (S5).
 *  - Cancelling wakes every waiter with -ECANCELED (S9).
 *
 * States: IDLE -> RUNNING -> COMPLETE | FAILED | CANCELLED. The last three
 * are terminal; once there a stream never changes state again (a CANCELLED
 * stream was stopped by us, not by its source), with one exception: a
 * COMPLETE stream whose evicted bytes cannot be fetched again (the
 * resource changed) becomes FAILED, and one that is cancelled while bytes
 * are evicted becomes CANCELLED.
 *
 * The store budget (cache.h): with stream_set_cache(), every block the
 * stream writes into is reserved first. No room means the write returns
 * -ENOBUFS and the stream is *paused*: the source stops producing (the
 * bytes it has stay where they are: nothing is lost) until its resume()
 * is called. Bytes of an evictable stream (stream_set_evictable) may be
 * evicted by the budget, whole blocks, never those a parked waiter or a
 * copy in progress needs; a read of them waits while the source fetches
 * them again. With stream_set_keep(), whole blocks older than the last
 * KEEP bytes are dropped as the stream fills; reads there fail with
 * -ENODATA. The *frontier* (bytes filled in order from 0) never moves
 * back: eviction and drops shrink what is present, not the frontier.
 *
 * Threads: every function here is thread-safe. done() callbacks run in the
 * thread that made the progress (usually the I/O thread) or in the thread
 * that called stream_cancel(), with no stream lock held.
 */
#ifndef STREAMFS_STREAM_H
#define STREAMFS_STREAM_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct stream;
struct store;

enum stream_state {
	STREAM_IDLE,
	STREAM_RUNNING,
	STREAM_COMPLETE,
	STREAM_FAILED,
	STREAM_CANCELLED,
};

/* "idle", "running", "complete", "failed", "cancelled". Never NULL. */
const char *stream_state_name(enum stream_state st);

/*
 * What a source provides. The stream calls start() once, from
 * stream_start(), without its lock held; the source then produces with
 * stream_write()/stream_fill_fd() and finishes with stream_end() or
 * stream_fail(), from any thread. cancel() asks it to stop as soon as it can
 * and must not block; producer calls made after it return -ECANCELED. It
 * comes once, after a start() that returned 0, also when the stream has
 * ended by then: a source may still hold something to let go of (a
 * finished command's background jobs).
 * destroy() frees the source's private data when the stream is freed.
 * A source that produces after start() returned holds its own reference
 * (stream_ref) until it has finished, and drops it then.
 */
struct stream_source_ops {
	const char *kind; /* "cmd", "pipe", "stdin", "url", "fake" */
	int (*start)(struct stream *s, void *src);
	void (*cancel)(struct stream *s, void *src);
	void (*destroy)(void *src);
	/*
	 * Optional, for sources with random access (URL): a reader needs
	 * [off, off+len), none of it present or asked for before. Called
	 * without the stream lock from a reader's thread; must not block.
	 * The source either fetches the range (writing it with stream_write)
	 * or declines with stream_unwant() (e.g. because its sequential fill
	 * will be there sooner); the reader waits for the bytes either way.
	 */
	void (*fetch)(struct stream *s, void *src, uint64_t off, uint64_t len);
	/*
	 * Optional: the stream was paused (a write returned -ENOBUFS) and room
	 * may be there now: produce again. Called from any thread without
	 * locks; must not block. A source that never sees -ENOBUFS needs none.
	 */
	void (*resume)(struct stream *s, void *src);
	/*
	 * Optional, for a source whose sequential fill holds while no reader
	 * wants its bytes (stream_hold_fill()): a reader now waits for bytes
	 * only that fill brings, so it must go on. Called at most once per
	 * hold, from a reader's thread without locks; must not block.
	 */
	void (*fill_wanted)(struct stream *s, void *src);
};

/*
 * Create an IDLE stream named @name (copied) that stores its bytes in @store
 * and is fed by @ops/@src. @store may be one not created yet (store_new()):
 * the stream creates it when it starts. Takes ownership of @store and @src
 * (on failure too: they are closed/destroyed). Returns a stream with one
 * reference, or NULL with errno set.
 */
struct stream *stream_new(const char *name, struct store *store,
                          const struct stream_source_ops *ops, void *src);

/* References. The stream is freed (store closed, source destroyed) when the
 * last one goes; it must be terminal or idle by then. */
struct stream *stream_ref(struct stream *s);
void stream_unref(struct stream *s);

const char *stream_name(const struct stream *s);

/* The source's kind ("cmd", "pipe", "stdin", "url", ...). */
const char *stream_kind(const struct stream *s);

/* True if the source can fetch ranges out of order (stream_want does
 * something). */
bool stream_can_fetch(const struct stream *s);

/*
 * IDLE -> RUNNING, create the store (store_create()) and call the source's
 * start(). Idempotent: returns 0 at once for a stream that was already
 * started. If the store cannot be created ("cannot create the store in
 * DIR: Too many open files") or start() fails, the stream is FAILED at
 * offset 0 with that error, and the error is returned.
 */
int stream_start(struct stream *s);

/*
 * Stop the stream: a RUNNING or IDLE stream becomes CANCELLED with @msg
 * (may be NULL) and every parked waiter is completed with -ECANCELED.
 * Present bytes stay readable. A terminal stream keeps its state. Either
 * way the source's cancel() is called (once) if it was started, so it lets
 * go of what it still holds. Can't fail.
 */
void stream_cancel(struct stream *s, const char *msg);

/* ---- the store budget ------------------------------------------------- */

struct cache;

/* Account this stream's store in @ca (before stream_start). */
void stream_set_cache(struct stream *s, struct cache *ca);

/* Keep only the last @bytes (0: everything): see above. Before start. */
void stream_set_keep(struct stream *s, uint64_t bytes);

/* The source can fetch any range again, and tells versions apart: its
 * bytes may be evicted (not with keep). */
void stream_set_evictable(struct stream *s, bool on);

/*
 * For a reader that reads the store's file itself (FUSE passthrough): if
 * the stream is complete, every byte of it is in the store, and the
 * store's file is exactly the stream's length, no block of it is evicted
 * from now on, and the store's descriptor is returned (owned by the
 * stream; valid while it lives). Otherwise -1, and nothing is held. Each
 * hold that succeeded is ended by stream_release_whole().
 */
int stream_hold_whole(struct stream *s);
void stream_release_whole(struct stream *s);

/* ---- producer side ---------------------------------------------------- */

/*
 * Store @len bytes at @off, mark them present, and wake the readers they
 * satisfy. Bytes already present are not rewritten. Returns 0, -ECANCELED
 * if the stream is no longer running, or the store's error (the stream is
 * then FAILED at its frontier with that error). One exception: when the
 * store refuses bytes past the largest file size it allows (EFBIG: its file
 * system's limit, 16 TiB on ext4, or RLIMIT_FSIZE), the bytes before that
 * limit are kept, reads needing a byte at or past it get -EFBIG, the
 * stream goes on, and -EFBIG is returned: a range fetched for one reader
 * must not fail the stream for all. A producer that writes sequentially
 * with stream_write() cannot go on after that and should stream_fail().
 */
int stream_write(struct stream *s, uint64_t off, const void *buf, size_t len);

/*
 * stream_write() with @flags: STREAM_AHEAD for a speculative fill (a
 * download ahead of every reader): it may only evict bytes readers have
 * used, unless a parked reader waits for these bytes. Either may return
 * -ENOBUFS: no room for all of it, the stream is paused until the
 * source's resume() (stream_fill_fd too). A prefix that had room may have
 * been stored: stream_write_flags() says how many bytes in @stored (may be
 * NULL; @len on success), and the caller offers only the rest again.
 * (stream_write()'s caller offers the whole write again: the bytes
 * present by then are skipped.)
 */
#define STREAM_AHEAD 1u
int stream_write_flags(struct stream *s, uint64_t off, const void *buf, size_t len, unsigned flags,
                       size_t *stored);

/*
 * Move up to @max bytes from the descriptor @fd (a pipe, FIFO, tty or
 * file) to the sequential frontier. Returns the number of bytes moved,
 * 0 at end of file, -EAGAIN if @fd has nothing now, -ECANCELED, or another
 * negative errno (a store error fails the stream as stream_write does; a
 * read error on @fd is returned for the source to report).
 */
ssize_t stream_fill_fd(struct stream *s, int fd, size_t max);

/* Append: stream_write() at the sequential frontier, except that a store
 * refusing bytes with EFBIG fails the stream there, to the byte. */
int stream_append(struct stream *s, const void *buf, size_t len);

/*
 * Announce the stream's length (Content-Length, a declared size). stat
 * shows it from now on; ending short of it is a failure (S5), and bytes
 * past it are refused with -EFBIG (the stream fails at @len). Announcing a
 * length smaller than the bytes already present fails with -EINVAL.
 */
int stream_set_length(struct stream *s, uint64_t len);

/*
 * The source has delivered everything. The stream becomes COMPLETE with
 * its size fixed at the frontier, or FAILED at the frontier if that is
 * short of the announced length or of bytes already written further
 * ahead. No-op on a terminal stream.
 */
void stream_end(struct stream *s);

/*
 * The source failed: FAILED at the sequential frontier with errno @err
 * (positive, e.g. EIO) and a printf-style message for status and the log.
 * No-op on a terminal stream.
 */
void stream_fail(struct stream *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Source-specific status (e.g. "exit_status", "http_code"), shown as
 * user.streamfs.KEY. Replaces an earlier value of the same key. Returns 0
 * or -ENOMEM.
 */
int stream_set_attr(struct stream *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- reader side ------------------------------------------------------ */

enum stream_wait_kind {
	STREAM_WAIT_RANGE, /* all of [off, off+len), or the end/failure inside it */
	STREAM_WAIT_ANY,   /* at least one byte at off (pipe-like reads), or end/failure */
	STREAM_WAIT_END,   /* the stream is terminal */
	STREAM_WAIT_SIZE,  /* a size worth showing: a length announced, a byte at 0, or the end */
};

/* stream_wait() returns this when it parked the waiter ("in progress"; no
 * result of a wait is ever -EINPROGRESS). */
#define STREAM_PARKED ((ssize_t)-EINPROGRESS)

/*
 * A waiting reader. The caller allocates it (usually inside its own request
 * struct), calls stream_waiter_init(), fills kind/off/len/done/data and
 * passes it to stream_wait(). Fields after "private" belong to stream.c.
 *
 * Result passed to done() (and returned by stream_wait when not parked):
 *  RANGE/ANY: bytes readable at off (> 0), 0 at or past the end, -EIO if
 *             the stream failed at or before off, -ECANCELED if cancelled,
 *             -EFBIG if the store cannot hold the byte at off (see
 *             stream_write), -ENODATA if off was dropped (keep). A RANGE
 *             result is len, except at the end, the failure point or the
 *             store's limit.
 *  END:       0 complete, -EIO failed, -ECANCELED cancelled.
 *  SIZE:      0, or -EIO/-ECANCELED if the stream stopped with no byte at 0
 *             (a source that failed at once).
 *  any kind:  -EINTR if stream_unwait() was called before stream_wait().
 */
struct stream_waiter {
	enum stream_wait_kind kind;
	uint64_t off;
	size_t len;
	void (*done)(struct stream_waiter *w, ssize_t result);
	void *data;

	/* private */
	struct stream_waiter *next, *prev;
	uint64_t need;  /* first byte this waiter still misses */
	ssize_t result; /* handed to done() */
	int wstate;
	bool held; /* its blocks are reserved in the budget: they are pinned */
};

void stream_waiter_init(struct stream_waiter *w);

/*
 * Ask for @w's condition. If it can be answered now, returns the result
 * (>= 0 or -errno) and @w stays the caller's; done() is not called.
 * Otherwise parks @w and returns STREAM_PARKED: done() will be called
 * exactly once, later, unless stream_unwait() takes @w back first.
 * A parked waiter does not start the stream; call stream_start() first.
 */
ssize_t stream_wait(struct stream *s, struct stream_waiter *w);

/*
 * Take @w back (a reader was interrupted). Returns true if @w was parked and
 * is now the caller's again: done() will not be called. Returns false if
 * done() has been or is about to be called (the caller must not touch @w),
 * or if @w had not been passed to stream_wait() yet: that later call then
 * returns -EINTR. Safe to call from any thread, concurrently with done().
 */
bool stream_unwait(struct stream *s, struct stream_waiter *w);

/*
 * Copy the present bytes [off, off+len) into @buf (pread from the store;
 * no mapping is touched, so the daemon's RSS does not grow with the
 * stream). The bytes never change once present. Returns 0, -ERANGE if
 * part of the range is not present, or the store's error.
 */
int stream_copy(struct stream *s, void *buf, size_t len, uint64_t off);
/* Ask the source again for the bytes parked readers miss (reserving room
 * for them first), even if they were asked before: for a source that knows
 * none of its fetches is still running. */
void stream_reask(struct stream *s);

/* As stream_copy(), but not a read: the blocks are not marked used, so
 * eviction's order stays that of the readers (for copies the daemon makes
 * for itself, such as completing a page for the page cache). */
int stream_peek(struct stream *s, void *buf, size_t len, uint64_t off);

/*
 * stream_copy() for a reply to a reader, which also keeps the set of bytes
 * sent in a way the kernel's page cache did not keep (a direct_io open),
 * in the same hold of the stream lock: a reply that is not @cached adds
 * its bytes to the set, a @cached one (the kernel keeps it in the page
 * cache) removes them. stream_take_sent() hands the noted ranges below
 * @below back one at a time, lowest first (removing each; one that crosses
 * @below is split there), so that the FUSE layer can store them in the
 * page cache. Best effort: not for keep= streams, and a set scattered into
 * very many ranges stops growing.
 */
int stream_copy_reply(struct stream *s, void *buf, size_t len, uint64_t off, bool cached);
bool stream_take_sent(struct stream *s, uint64_t below, uint64_t *off, uint64_t *len);
/* The highest noted bytes instead, at most @chunk of them: the end of the
 * last range, from the last multiple of @chunk below its end (or from its
 * start), so that repeated calls walk down in @chunk-aligned pieces. */
bool stream_take_sent_last(struct stream *s, uint64_t chunk, uint64_t *off, uint64_t *len);

/*
 * Blocking read with regular-file results (S3/S4): waits for the whole
 * range (or, with @partial, for at least one byte), then copies. Returns
 * bytes read, 0 at end, -EIO past a failure, -ECANCELED. For tests and
 * other non-FUSE users; the FUSE layer parks instead.
 */
ssize_t stream_read(struct stream *s, void *buf, size_t len, uint64_t off, bool partial);

/*
 * Random access ahead of the fill: a reader will need [off, off+len). For
 * the parts that are neither present nor already asked for, the source's
 * fetch() is called (sources without one ignore this). Cheap when there is
 * nothing to do. Can't fail.
 */
void stream_want(struct stream *s, uint64_t off, uint64_t len);

/* Only ranges starting at least @bytes past the frontier are worth a
 * fetch() (the sequential fill brings nearer ones sooner). Default 0;
 * UINT64_MAX: never. Under a budget at most its window
 * (cache_window_max()). Returns the distance in effect. */
uint64_t stream_set_fetch_distance(struct stream *s, uint64_t bytes);

/* The source will not fetch [off, off+len) after all: forget that it was
 * asked for, so a later stream_want() may ask again. */
void stream_unwant(struct stream *s, uint64_t off, uint64_t len);

/* The end of the run of present bytes starting at @off (@off if the byte
 * at @off is missing). */
uint64_t stream_run_end(struct stream *s, uint64_t off);

/* Does a reader whose room in the budget is reserved wait for a byte in
 * [off, end)? A transfer that has no room for its next bytes goes on past
 * them (dropping them) rather than pause in front of such a reader: its
 * room is all the budget may have. */
bool stream_held_reader_in(struct stream *s, uint64_t off, uint64_t end);

/* Bytes filled in order from 0 (never decreases). */
uint64_t stream_frontier(struct stream *s);

/*
 * Readers first: the source's sequential fill would hold until a reader
 * waits for bytes only it brings (ones at or past the frontier that no
 * fetch() was asked for, or the end). Returns false, and holds nothing, if
 * such a reader waits already; else the next one to park calls the
 * source's fill_wanted() (once). stream_release_fill() ends the hold
 * from the source's side (it went on for another reason).
 */
bool stream_hold_fill(struct stream *s);
void stream_release_fill(struct stream *s);

/* Does @s drop its oldest bytes (keep=)? Then bytes present now may be gone
 * by the time a reply is copied later. */
bool stream_drops_bytes(struct stream *s);

/*
 * A fetch of [off, off+len) for a COMPLETE stream (its bytes had been
 * evicted) failed for now: forget it was asked for, and answer the
 * waiters that need bytes in it with -EIO.
 */
void stream_fetch_failed(struct stream *s, uint64_t off, uint64_t len);

/* ---- status ----------------------------------------------------------- */

struct stream_info {
	enum stream_state state;
	uint64_t bytes;        /* bytes received (each byte counted once) */
	uint64_t held;         /* bytes present in the store now */
	uint64_t store;        /* store blocks held, in bytes (what the budget counts) */
	uint64_t evicted;      /* bytes evicted so far (counted each time) */
	uint64_t dropped;      /* bytes dropped by keep */
	uint64_t keep;         /* keep setting, 0 if none */
	int paused;            /* enum cache_pause: why the source waits, 0 if not */
	uint64_t frontier;     /* contiguous bytes from offset 0, filled in order */
	int64_t length;        /* exact size when COMPLETE, else the announced length, else -1 */
	uint64_t error_offset; /* FAILED/CANCELLED: where the fill stopped */
	int error;             /* FAILED/CANCELLED: positive errno */
	char error_msg[256];   /* FAILED/CANCELLED: "exit 127: sh: foo: not found", ... */
	unsigned waiters;      /* parked waiters now */
	uint64_t start_ms;     /* CLOCK_MONOTONIC ms at start, 0 if idle */
	uint64_t end_ms;       /* ... when it became terminal, 0 if not */
};

/* A consistent snapshot. Can't fail. */
void stream_get_info(struct stream *s, struct stream_info *out);

/*
 * Copy the value of source attribute @key into @buf (NUL-terminated,
 * truncated to @size). Returns its length, or -ENODATA.
 */
ssize_t stream_get_attr(struct stream *s, const char *key, char *buf, size_t size);

/*
 * Call @fn for each source attribute key, under the stream's lock (@fn must
 * not call back into this stream). Returns the number of keys.
 */
int stream_list_attrs(struct stream *s, void (*fn)(const char *key, void *arg), void *arg);

#endif
