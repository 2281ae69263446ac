/*
 * cache.h - the mount-wide budget of the store: how many bytes all streams
 * together may hold, which blocks to evict, and who waits for room.
 *
 * The store is accounted in blocks of CACHE_BLOCK bytes. Before a stream
 * writes into a block it does not hold yet it reserves the block here, and
 * the reservation holds at every moment:
 *  - used + CACHE_BLOCK <= limit (--cache-size; 0 means no limit), and
 *  - the cache file system keeps at least min_free bytes free after it
 *    (--cache-min-free; statvfs of the cache directory, or MemAvailable
 *    for the memory store), counting blocks reserved but not allocated yet.
 * The stream then allocates the block for real (fallocate), so the disk
 * use equals the accounting and a later write into it cannot fail with
 * ENOSPC.
 *
 * When there is no room, blocks of *evictable* clients (streams whose
 * source can fetch bytes again: URLs with Range and a validator) are
 * evicted, least recently used first, in batches down to a low-water mark.
 * A client that still gets no room is put on the paused list and told to
 * retry (resume()) when blocks are released, when a block becomes
 * evictable, or on cache_poll() (free space can appear from outside).
 *
 * Locking: the cache lock is taken before any client's own lock (the
 * client callbacks candidates() and evict() run under it and take the
 * stream's lock). Clients must not call into the cache while holding
 * their own lock. resume() is called with no cache lock held, between
 * get() and put() so the client cannot go away meanwhile.
 */
#ifndef STREAMFS_CACHE_H
#define STREAMFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_BLOCK (1u << 20)

struct cache;
struct ioloop;

/* A block that may be evicted: which, and how recently it was used. */
struct cache_cand {
	struct cache_client *c;
	uint64_t block; /* index: bytes [block * CACHE_BLOCK, +CACHE_BLOCK) */
	uint64_t tick;  /* last use; lower is older */
	bool read;      /* a reader has used it since it was written */
};

/* Why a client is paused. */
enum cache_pause {
	CACHE_RUN,
	CACHE_FULL,    /* the budget is used up by bytes that cannot be evicted */
	CACHE_LOWDISK, /* the cache file system is down to min_free */
	CACHE_NOSPACE, /* the store reported ENOSPC or EDQUOT */
};

/* "cache full", "cache file system low on space", "no space left in the
 * cache directory"; "" for CACHE_RUN. */
const char *cache_pause_text(enum cache_pause why);

struct cache_client {
	/* Filled by the owner before cache_attach(). */
	bool (*get)(struct cache_client *c); /* take a reference; false if going away */
	void (*put)(struct cache_client *c);
	void (*resume)(struct cache_client *c); /* room may be there: try again */
	/* Append up to @max evictable blocks to @out; returns how many. */
	size_t (*candidates)(struct cache_client *c, struct cache_cand *out, size_t max);
	/* Evict @block if it is still held, unpinned and last used at @tick.
	 * Returns true if it was released (the cache then counts it free).
	 * Sets *@reask if a parked reader needed bytes of it: the cache then
	 * calls reask() once no lock is held, so they are asked for again. */
	bool (*evict)(struct cache_client *c, uint64_t block, uint64_t tick, bool *reask);
	void (*reask)(struct cache_client *c);
	/* Called once a second: ask again for what parked readers miss and
	 * only a fetch can bring (a backstop). May be NULL. */
	void (*recheck)(struct cache_client *c);

	/* private: cache.c, under the cache lock */
	struct cache *cache;
	struct cache_client *next, *prev; /* attached clients */
	bool paused;
	bool evictable;
	bool reask_due; /* evict() said so; reask() not called yet */
	enum cache_pause why;
	uint64_t blocks; /* held now */
};

/*
 * A budget for the store in @dir (NULL: the memory store). @limit bytes
 * (0: no limit; the command line asks for two blocks at least), and keep @min_free bytes
 * free, or, if @min_free_pct >= 0, that percentage of the file system (of
 * RAM for the memory store). Returns NULL with errno set.
 */
struct cache *cache_new(const char *dir, uint64_t limit, uint64_t min_free, double min_free_pct);

/* Free it. Clients still attached are forgotten. NULL is fine. */
void cache_free(struct cache *ca);

/* Start retrying paused clients every second from @loop's thread (free
 * space may appear from outside: a file deleted, a quota raised). */
int cache_start_poll(struct cache *ca, struct ioloop *loop);

/* Retry every paused client now. Any thread, no lock held. */
void cache_poll(struct cache *ca);

void cache_attach(struct cache *ca, struct cache_client *c);
/* Forget @c and release the blocks it holds. No client lock held. */
void cache_detach(struct cache_client *c);
/*
 * cache_detach() in two steps, for a client whose storage goes after it is
 * forgotten: cache_unlink() forgets @c (the cache looks at it no more) and
 * returns its cache (NULL if none) with its blocks in @blocks, still
 * counted as used; cache_give_back() releases them once the storage is
 * gone, so that no client resumed in between writes past the budget.
 */
struct cache *cache_unlink(struct cache_client *c, uint64_t *blocks);
void cache_give_back(struct cache *ca, uint64_t blocks);
/* Blocks of @c may (not) be evicted from now on. */
void cache_set_evictable(struct cache_client *c, bool on);

/* Reserve flags. */
#define CACHE_AHEAD 1u /* speculative fill: evict only blocks already read */

/*
 * Reserve one block for @c. Returns 0 (the block counts as used and
 * pending; call cache_allocated() or cache_unreserve() next), or -ENOBUFS:
 * no room (*@why says why), @c is on the paused list and will be resumed.
 */
int cache_reserve(struct cache_client *c, unsigned flags, enum cache_pause *why);
/* The reserved block is allocated on disk now. */
void cache_allocated(struct cache_client *c);
/* The reserved block could not be allocated (@err: ENOSPC, EDQUOT, ...):
 * give it back. For ENOSPC/EDQUOT, evict a batch of other blocks so the
 * next try may work; returns true if anything was evicted. */
bool cache_unreserve(struct cache_client *c, int err);
/* Put @c on the paused list for @why (it will be resumed). */
void cache_pause(struct cache_client *c, enum cache_pause why);
/* @c dropped @n blocks itself (keep=, a freed stream). */
void cache_release(struct cache_client *c, uint64_t n);
/* A block of an evictable client was read for the first time: speculative
 * fills waiting for room may go on. Cheap when nobody waits. */
void cache_note_read(struct cache *ca);
/* The most a reader's read-ahead should ask to fetch at once: an eighth
 * of the budget (at least a block), so read-ahead never evicts the bytes
 * it was fetched for. UINT64_MAX without a limit. */
uint64_t cache_window_max(const struct cache *ca);
/* A fresh tick for the LRU order. */
uint64_t cache_tick(struct cache *ca);

struct cache_stats {
	uint64_t limit;      /* 0: none */
	uint64_t min_free;   /* bytes, as configured or from the percentage now */
	double min_free_pct; /* < 0 if given in bytes */
	uint64_t used;       /* bytes reserved (blocks * CACHE_BLOCK) */
	uint64_t evicted;    /* bytes evicted so far */
	uint64_t evictions;  /* blocks evicted so far */
	unsigned paused;     /* clients paused now */
};
void cache_get_stats(struct cache *ca, struct cache_stats *out);

#endif
