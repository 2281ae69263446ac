/*
 * stream_int.h - the parts of the stream, private to src/engine:
 *
 *   stream.c        the state machine, the waiters, reading, attributes
 *                   and status
 *   stream_write.c  producing: the writes of the source into the store
 *   stream_cache.c  the store budget: the per-stream block table, pins,
 *                   the cache client (candidates, evict, resume), room
 *                   for readers, keep= drops
 *   stream_fetch.c  random access: what was asked of the source's fetch()
 *
 * include/streamfs/stream.h has the contract; each file says which of
 * its invariants it keeps. Every field below marked "protected by lock"
 * is read and written only under s->lock, and so is every function
 * declared here that says "Under the lock". No I/O and no callback runs
 * under the stream lock, except the hole punch of an eviction or drop
 * (stream_cache.c says why).
 */
#ifndef STREAMFS_STREAM_INT_H
#define STREAMFS_STREAM_INT_H

#include "rangeset.h"
#include "streamfs/cache.h"
#include "streamfs/stream.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* stream_waiter.wstate */
enum { W_NEW, W_PARKED, W_CLAIMED, W_CANCELLED };

struct attr {
	struct attr *next;
	char *key, *value;
};

/* Bytes a copy or a write is working on: not to be evicted or dropped. */
struct pin {
	uint64_t a, b;
	struct pin *next;
};

#define BLK ((uint64_t)CACHE_BLOCK)
#define BLK_READ 1u /* in blk[]: read since written; the rest is the tick << 1 */

struct stream {
	atomic_int refs;
	char *name;
	struct store *store;
	/* --persist: its entry (persist.c), set before the stream starts and
	 * cleared when the persistent cache closes; under the lock. */
	struct persist_entry *persist;
	const struct stream_source_ops *ops;
	void *src;

	pthread_mutex_t lock;
	/* protected by lock */
	enum stream_state state;
	bool started;       /* start() returned 0: the source may hold something */
	bool cancel_wanted; /* stream_cancel() was called */
	bool cancel_sent;   /* the source's cancel() was called */
	struct rangeset present;
	struct rangeset wanted; /* asked of the source's fetch(), maybe not here yet */
	uint64_t fetch_distance;
	bool fill_held; /* stream_hold_fill(): the next reader of the fill's bytes says so */
	uint64_t frontier;
	uint64_t seq_pos;     /* where stream_append/stream_fill_fd write next */
	int64_t length;       /* exact when complete, announced, or -1 */
	uint64_t store_limit; /* the store cannot hold bytes from here on */
	uint64_t error_offset;
	int error;
	char error_msg[256];
	struct stream_waiter waiters; /* list head; waiters.next == &waiters when empty */
	unsigned nwaiters;
	struct attr *attrs;
	uint64_t start_ms, end_ms;

	/* the store budget (cache NULL: none) */
	struct cache *cache;
	struct cache_client cc;
	/* protected by lock */
	uint64_t *blk; /* per block from blk_base: 0 not held, else tick << 1 | BLK_READ */
	uint64_t blk_base, blk_n;
	uint64_t held_blocks;
	struct pin *pins;
	unsigned whole_holds; /* stream_hold_whole(): no block is evicted */
	bool evictable;
	enum cache_pause paused;
	unsigned resumes;       /* counts cc_resume(): a pause older than one is stale */
	bool unpinned;          /* a reader holding reserved blocks was answered */
	uint64_t keep, drop_to; /* keep: bytes below drop_to are gone */
	uint64_t top;           /* the highest byte ever written, +1 */
	struct rangeset seen;   /* every byte ever present */
	/* Bytes sent to readers that the kernel's page cache did not keep
	 * (direct_io opens), for the FUSE layer to store there once the
	 * stream is complete: stream_copy_reply()/stream_take_sent(). */
	struct rangeset sent;
	uint64_t evicted, dropped;
};

/* ---- stream.c: states and waiters ---------------------------------------- */

/* Writes are taken while running, and for a complete stream whose evicted
 * bytes come back (bytes already present are skipped). Under the lock. */
bool accepts_writes(const struct stream *s);

/* Take @w, parked, off s->waiters. Under the lock. */
void unlink_waiter(struct stream *s, struct stream_waiter *w);

/* Move the waiters that are answerable now from s->waiters to @ready:
 * every one with @all, else those missing a byte in [a, b). Under the
 * lock; finish_ready() answers them after it is dropped. */
void collect(struct stream *s, struct stream_waiter *ready, bool all, uint64_t a, uint64_t b);

/* Call done() on what collect() gathered. No lock held. */
void finish_ready(struct stream_waiter *ready);

/* Become terminal with an error. Under the lock, the state not terminal;
 * fills @ready with the waiters to answer. */
void set_failed(struct stream *s, enum stream_state st, int err, const char *msg,
                struct stream_waiter *ready);

/* ---- stream_fetch.c ----------------------------------------------------- */

/* Record as wanted the gaps of [off, off+len) neither present nor wanted,
 * and return them in @ask; fetch_asked() then asks the source, unlocked. */
int want_locked(struct stream *s, uint64_t off, uint64_t len, struct range ask[8]);
void fetch_asked(struct stream *s, const struct range *ask, int nask);
/* Under s->lock: does @w wait for bytes only the sequential fill brings
 * (stream_hold_fill())? */
bool waits_for_fill(const struct stream *s, const struct stream_waiter *w);

/* ---- stream_write.c ------------------------------------------------------- */

/* [off, end) is in the store: mark it present (and seen, used), move the
 * frontier, and collect the waiters it answers into @ready. Under the
 * lock. Returns 0 or -ENOMEM. */
int present_add(struct stream *s, uint64_t off, uint64_t end, struct stream_waiter *ready);

/* ---- persist.c ------------------------------------------------------------ */

/* Bytes [a, b) are about to be written to @s's persistent data file: make
 * sure the map on disk names none of the bytes that share a page with
 * them and are not present (evicted since the map was written). Takes
 * the entry's locks and @s's lock; call with none held. */
void persist_before_write(struct persist_entry *e, struct stream *s, uint64_t a, uint64_t b);

/* ---- stream_cache.c: blocks, pins, room -------------------------------- */

/* Mark the blocks of [a, b) used now (a read or a write). Returns true if
 * a block of an evictable stream became read. Under the lock. */
bool blk_touch(struct stream *s, uint64_t a, uint64_t b, bool read);

/* Keep evictions and drops off [p->a, p->b) until pin_del(). Under the
 * lock; unpin() takes it. */
void pin_add(struct stream *s, struct pin *p);
void pin_del(struct stream *s, struct pin *p);
void unpin(struct stream *s, struct pin *p);

/* Hold every block of [off, end) in the budget. Returns @end, the start
 * of the first block that could not be had if some could, or -ENOBUFS /
 * a store error if the first one could not. Takes the lock. */
int64_t hold_range(struct stream *s, uint64_t off, uint64_t end, unsigned flags);
/* A reader's reservation of [p->a, p->b): pinned first (pin_add), so
 * that reserving one of its blocks cannot evict another it just got; the
 * caller drops the pin under the lock where it marks the reader held,
 * and only if range_held() still says so. Returns true if every block
 * was had. Takes the lock. */
bool hold_for_reader(struct stream *s, struct pin *p);
/* Are all blocks of [a, b) held? Under the lock. */
bool range_held(struct stream *s, uint64_t a, uint64_t b);
/* Reserve the blocks of parked readers that have none yet (see stream_cache.c). */
void admit_waiters(struct stream *s);
void admit_lost(struct stream *s);

/* The count of resumes so far, and the pause to show unless one came
 * since @seen. Take the lock. */
unsigned resume_count(struct stream *s);
void set_paused(struct stream *s, enum cache_pause why, unsigned seen);

/* Give back the blocks reserved past the last byte (the stream ended).
 * Takes the lock. */
void release_past_end(struct stream *s);

/* keep=: drop the whole blocks older than the last s->keep bytes. Takes
 * the lock. */
void drop_old(struct stream *s);

/* The end of the range reader @w may need room for, or w->off if it
 * needs none. Under the lock. */
uint64_t room_needed(struct stream *s, const struct stream_waiter *w);

#endif
