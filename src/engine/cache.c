/*
 * cache.c - the store's budget: see include/streamfs/cache.h.
 *
 * Why blocks: a byte-exact budget would need the file system's own
 * accounting (pages, extents) to match ours; whole 1 MiB blocks,
 * reserved before the first byte and allocated with fallocate(), make
 * "bytes on disk" and "bytes accounted" the same number, and let eviction
 * punch holes the file system really gives back.
 *
 * Eviction order: blocks a reader has already used go first (least
 * recently used first), then blocks nobody has read yet (least recently
 * written first). A speculative fill (CACHE_AHEAD: a URL downloading
 * ahead of its readers) may only evict blocks already read, so it never
 * throws away bytes nobody has seen to make room for more bytes nobody has
 * seen; it pauses instead, and goes on as readers catch up.
 */
#include "streamfs/cache.h"

#include "streamfs/ioloop.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#define POLL_MS 1000
#define MEMINFO_MS 100 /* how long a /proc/meminfo reading is trusted */
#define BATCH_MIN 4    /* blocks evicted at least per batch */
#define BATCH_MAX 64   /* ... and at most, when making room on the disk */

struct cache {
	pthread_mutex_t lock;
	char *dir; /* NULL: the memory store */
	uint64_t limit;
	uint64_t min_free;
	double min_free_pct;

	/* under lock */
	uint64_t used;    /* bytes reserved */
	uint64_t pending; /* blocks reserved, not allocated on disk yet */
	uint64_t evictions;
	struct cache_client clients; /* list head */
	unsigned npaused;
	unsigned nreask;                                    /* clients with reask_due */
	uint64_t mem_avail, mem_total, mem_used_at, mem_ms; /* memory store picture */

	atomic_uint apaused; /* npaused, read without the lock */
	atomic_uint_fast64_t clock;
	struct ioloop *loop;
	struct ioloop_timer timer;
};

const char *cache_pause_text(enum cache_pause why)
{
	switch (why) {
	case CACHE_RUN:
		return "";
	case CACHE_FULL:
		return "cache full";
	case CACHE_LOWDISK:
		return "cache file system low on space";
	case CACHE_NOSPACE:
		return "no space left in the cache directory";
	}
	return "";
}

struct cache *cache_new(const char *dir, uint64_t limit, uint64_t min_free, double min_free_pct)
{
	struct cache *ca = calloc(1, sizeof(*ca));
	if (!ca || (dir && !(ca->dir = strdup(dir)))) {
		free(ca);
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&ca->lock, NULL);
	ca->limit = limit;
	ca->min_free = min_free;
	ca->min_free_pct = min_free_pct;
	ca->clients.next = ca->clients.prev = &ca->clients;
	atomic_init(&ca->apaused, 0);
	atomic_init(&ca->clock, 1);
	return ca;
}

void cache_free(struct cache *ca)
{
	if (!ca)
		return;
	pthread_mutex_destroy(&ca->lock);
	free(ca->dir);
	free(ca);
}

uint64_t cache_window_max(const struct cache *ca)
{
	if (!ca->limit)
		return UINT64_MAX;
	return ca->limit / 8 > CACHE_BLOCK ? ca->limit / 8 : CACHE_BLOCK;
}

uint64_t cache_tick(struct cache *ca)
{
	return atomic_fetch_add_explicit(&ca->clock, 1, memory_order_relaxed) + 1;
}

/* ---- free space -------------------------------------------------------- */

static uint64_t now_ms(void)
{
	return ioloop_now_ms();
}

/* MemAvailable and MemTotal in bytes, or false. */
static bool read_meminfo(uint64_t *avail, uint64_t *total)
{
	FILE *f = fopen("/proc/meminfo", "re");
	if (!f)
		return false;
	char line[256];
	unsigned long long v;
	int found = 0;
	while (found < 2 && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
			*avail = (uint64_t)v * 1024;
			found++;
		} else if (sscanf(line, "MemTotal: %llu kB", &v) == 1) {
			*total = (uint64_t)v * 1024;
			found++;
		}
	}
	fclose(f);
	return found == 2;
}

/*
 * Free bytes of the cache file system now, and its size, counting blocks
 * reserved but not allocated yet as used. Under the lock. False if it
 * cannot be told (then only the budget applies).
 */
static bool free_space(struct cache *ca, uint64_t *avail, uint64_t *total)
{
	uint64_t a, t;
	if (ca->dir) {
		struct statvfs sv;
		if (statvfs(ca->dir, &sv) < 0)
			return false;
		a = (uint64_t)sv.f_bavail * sv.f_frsize;
		t = (uint64_t)sv.f_blocks * sv.f_frsize;
	} else {
		/* /proc/meminfo costs more than statvfs: read it at most every
		 * MEMINFO_MS and account our own growth since. */
		uint64_t now = now_ms();
		if (!ca->mem_ms || now - ca->mem_ms >= MEMINFO_MS) {
			if (!read_meminfo(&ca->mem_avail, &ca->mem_total))
				return false;
			ca->mem_ms = now;
			ca->mem_used_at = ca->used - ca->pending * CACHE_BLOCK;
		}
		int64_t grown =
		    (int64_t)(ca->used - ca->pending * CACHE_BLOCK) - (int64_t)ca->mem_used_at;
		a = grown > 0 && (uint64_t)grown > ca->mem_avail ? 0
		                                                 : ca->mem_avail - (uint64_t)grown;
		t = ca->mem_total;
	}
	uint64_t p = ca->pending * CACHE_BLOCK;
	*avail = a > p ? a - p : 0;
	*total = t;
	return true;
}

static uint64_t min_free_of(const struct cache *ca, uint64_t total)
{
	if (ca->min_free_pct >= 0)
		return (uint64_t)((double)total * ca->min_free_pct / 100.0);
	return ca->min_free;
}

/* May one more block be reserved? Under the lock. */
static enum cache_pause room(struct cache *ca)
{
	if (ca->limit && ca->used + CACHE_BLOCK > ca->limit)
		return CACHE_FULL;
	if (ca->min_free_pct == 0 || (ca->min_free_pct < 0 && ca->min_free == 0))
		return CACHE_RUN;
	uint64_t avail, total;
	if (!free_space(ca, &avail, &total))
		return CACHE_RUN;
	return avail >= min_free_of(ca, total) + CACHE_BLOCK ? CACHE_RUN : CACHE_LOWDISK;
}

/* ---- eviction ---------------------------------------------------------- */

static int cand_cmp(const void *a, const void *b)
{
	const struct cache_cand *x = a, *y = b;
	if (x->read != y->read)
		return x->read ? -1 : 1;
	return x->tick < y->tick ? -1 : x->tick > y->tick;
}

/*
 * Evict up to @want blocks (read ones first, oldest first; with
 * CACHE_AHEAD only read ones). Under the lock. Returns how many went.
 */
static uint64_t evict_blocks(struct cache *ca, uint64_t want, unsigned flags)
{
	size_t cap = 0;
	for (struct cache_client *c = ca->clients.next; c != &ca->clients; c = c->next)
		if (c->evictable)
			cap += (size_t)c->blocks;
	if (cap == 0 || want == 0)
		return 0;
	cap += 16; /* a block reserved by a writer meanwhile */
	struct cache_cand *v = malloc(cap * sizeof(*v));
	if (!v)
		return 0;
	size_t n = 0;
	for (struct cache_client *c = ca->clients.next; c != &ca->clients && n < cap; c = c->next) {
		if (!c->evictable || !c->blocks)
			continue;
		size_t k = c->candidates(c, v + n, cap - n);
		for (size_t i = 0; i < k; i++)
			v[n + i].c = c;
		n += k;
	}
	if (flags & CACHE_AHEAD) {
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			if (v[i].read)
				v[k++] = v[i];
		n = k;
	}
	qsort(v, n, sizeof(*v), cand_cmp);
	uint64_t done = 0;
	for (size_t i = 0; i < n && done < want; i++) {
		struct cache_client *c = v[i].c;
		bool reask = false;
		if (!c->evict(c, v[i].block, v[i].tick, &reask))
			continue;
		if (reask && !c->reask_due) {
			c->reask_due = true;
			ca->nreask++;
		}
		c->blocks--;
		ca->used -= CACHE_BLOCK;
		done++;
	}
	ca->evictions += done;
	free(v);
	return done;
}

/* How many blocks one batch evicts to get room for @why. Under the lock. */
static uint64_t batch_size(struct cache *ca, enum cache_pause why)
{
	if (why == CACHE_FULL) {
		/* Down to a low-water mark a 32nd of the budget (at least a
		 * block) below it, so the scan is not repeated every block. */
		uint64_t lim = ca->limit / CACHE_BLOCK, used = ca->used / CACHE_BLOCK;
		uint64_t slack = lim / 32 ? lim / 32 : 1;
		uint64_t low = lim > slack ? lim - slack : 0;
		return used + 1 > low ? used + 1 - low : 1;
	}
	uint64_t b = ca->used / 32 / CACHE_BLOCK;
	return b < BATCH_MIN ? BATCH_MIN : b > BATCH_MAX ? BATCH_MAX : b;
}

/* ---- paused clients ---------------------------------------------------- */

static void unpause_locked(struct cache *ca, struct cache_client *c)
{
	if (!c->paused)
		return;
	c->paused = false;
	c->why = CACHE_RUN;
	ca->npaused--;
	atomic_store(&ca->apaused, ca->npaused);
}

static void pause_locked(struct cache *ca, struct cache_client *c, enum cache_pause why)
{
	c->why = why;
	if (c->paused)
		return;
	c->paused = true;
	ca->npaused++;
	atomic_store(&ca->apaused, ca->npaused);
}

/*
 * An eviction took bytes a parked reader was waiting for (a reader that
 * got no room when it parked pins nothing, and its bytes may be evicted
 * after its fetch brought them): tell those streams, so they ask for the
 * bytes again; nothing else would, and the reader would wait forever.
 * No lock held.
 */
static void reask_clients(struct cache *ca)
{
	pthread_mutex_lock(&ca->lock);
	unsigned n = ca->nreask;
	struct cache_client **v = n ? malloc(n * sizeof(*v)) : NULL;
	unsigned k = 0;
	for (struct cache_client *c = ca->clients.next; c != &ca->clients; c = c->next) {
		if (!c->reask_due)
			continue;
		c->reask_due = false;
		ca->nreask--;
		if (v && k < n && c->get(c))
			v[k++] = c;
	}
	pthread_mutex_unlock(&ca->lock);
	for (unsigned i = 0; i < k; i++) {
		if (v[i]->reask)
			v[i]->reask(v[i]);
		v[i]->put(v[i]);
	}
	free(v);
}

/* Tell every paused client to try again. No lock held. */
static void resume_paused(struct cache *ca)
{
	pthread_mutex_lock(&ca->lock);
	unsigned n = ca->npaused;
	struct cache_client **v = n ? malloc(n * sizeof(*v)) : NULL;
	unsigned k = 0;
	if (v) {
		for (struct cache_client *c = ca->clients.next; c != &ca->clients && k < n;
		     c = c->next) {
			if (!c->paused)
				continue;
			unpause_locked(ca, c);
			if (c->get(c))
				v[k++] = c;
		}
	}
	pthread_mutex_unlock(&ca->lock);
	for (unsigned i = 0; i < k; i++) {
		v[i]->resume(v[i]);
		v[i]->put(v[i]);
	}
	free(v);
}

void cache_poll(struct cache *ca)
{
	if (atomic_load(&ca->apaused))
		resume_paused(ca);
}

/*
 * A block was read to its end, so it may be evicted now. Under the lock,
 * not with the lock-free count: a reservation that scanned for victims
 * before the block was marked read pauses inside the same locked section,
 * so either it saw the block (and evicted it) or we see its pause here.
 * Reading the count without the lock could miss a pause made between the
 * scan and now, and nobody would ever resume that client.
 */
void cache_note_read(struct cache *ca)
{
	pthread_mutex_lock(&ca->lock);
	bool wake = ca->npaused > 0;
	pthread_mutex_unlock(&ca->lock);
	if (wake)
		resume_paused(ca);
}

/*
 * Once a second every client whose bytes can be evicted is told to ask
 * again for what its parked readers miss. Each path that evicts a
 * reader's bytes or stops a fetch asks again itself (reask_clients, the
 * URL source); this is the backstop for an interleaving none of them
 * sees, so that no reader can wait forever (it costs a lock and a look
 * at an empty list for a stream nobody waits on).
 */
static void reask_evictable(struct cache *ca)
{
	pthread_mutex_lock(&ca->lock);
	size_t n = 0;
	for (struct cache_client *c = ca->clients.next; c != &ca->clients; c = c->next)
		n += c->evictable;
	struct cache_client **v = n ? malloc(n * sizeof(*v)) : NULL;
	size_t k = 0;
	for (struct cache_client *c = ca->clients.next; v && c != &ca->clients && k < n;
	     c = c->next)
		if (c->evictable && c->recheck && c->get(c))
			v[k++] = c;
	pthread_mutex_unlock(&ca->lock);
	for (size_t i = 0; i < k; i++) {
		v[i]->recheck(v[i]);
		v[i]->put(v[i]);
	}
	free(v);
}

static void poll_fired(struct ioloop_timer *t)
{
	struct cache *ca = t->data;
	cache_poll(ca);
	reask_evictable(ca);
	ioloop_timer_arm(ca->loop, &ca->timer, POLL_MS);
}

static void poll_arm(void *arg)
{
	struct cache *ca = arg;
	ioloop_timer_arm(ca->loop, &ca->timer, POLL_MS);
}

int cache_start_poll(struct cache *ca, struct ioloop *loop)
{
	ca->loop = loop;
	ca->timer.cb = poll_fired;
	ca->timer.data = ca;
	return ioloop_call(loop, poll_arm, ca);
}

/* ---- clients ----------------------------------------------------------- */

void cache_attach(struct cache *ca, struct cache_client *c)
{
	pthread_mutex_lock(&ca->lock);
	c->cache = ca;
	c->paused = false;
	c->why = CACHE_RUN;
	c->blocks = 0;
	c->next = &ca->clients;
	c->prev = ca->clients.prev;
	ca->clients.prev->next = c;
	ca->clients.prev = c;
	pthread_mutex_unlock(&ca->lock);
}

struct cache *cache_unlink(struct cache_client *c, uint64_t *blocks)
{
	struct cache *ca = c->cache;
	*blocks = 0;
	if (!ca)
		return NULL;
	pthread_mutex_lock(&ca->lock);
	unpause_locked(ca, c);
	if (c->reask_due) {
		c->reask_due = false;
		ca->nreask--;
	}
	c->prev->next = c->next;
	c->next->prev = c->prev;
	*blocks = c->blocks;
	c->blocks = 0;
	c->cache = NULL;
	pthread_mutex_unlock(&ca->lock);
	return ca;
}

void cache_give_back(struct cache *ca, uint64_t blocks)
{
	if (!ca || !blocks)
		return;
	pthread_mutex_lock(&ca->lock);
	ca->used -= blocks * CACHE_BLOCK;
	bool wake = ca->npaused != 0;
	pthread_mutex_unlock(&ca->lock);
	if (wake)
		resume_paused(ca);
}

void cache_detach(struct cache_client *c)
{
	uint64_t blocks;
	struct cache *ca = cache_unlink(c, &blocks);
	cache_give_back(ca, blocks);
}

void cache_set_evictable(struct cache_client *c, bool on)
{
	pthread_mutex_lock(&c->cache->lock);
	c->evictable = on;
	pthread_mutex_unlock(&c->cache->lock);
}

int cache_reserve(struct cache_client *c, unsigned flags, enum cache_pause *whyp)
{
	struct cache *ca = c->cache;
	bool evicted = false;
	pthread_mutex_lock(&ca->lock);
	enum cache_pause why = room(ca);
	if (why != CACHE_RUN && evict_blocks(ca, batch_size(ca, why), flags) > 0) {
		evicted = true;
		why = room(ca);
	}
	if (why != CACHE_RUN) {
		pause_locked(ca, c, why);
		bool reask = ca->nreask > 0;
		pthread_mutex_unlock(&ca->lock);
		if (reask)
			reask_clients(ca);
		*whyp = why;
		return -ENOBUFS;
	}
	unpause_locked(ca, c);
	ca->used += CACHE_BLOCK;
	ca->pending++;
	c->blocks++;
	bool others = evicted && ca->npaused;
	bool reask = ca->nreask > 0;
	pthread_mutex_unlock(&ca->lock);
	if (reask)
		reask_clients(ca);
	if (others) /* the batch made room for more than this block */
		resume_paused(ca);
	return 0;
}

void cache_allocated(struct cache_client *c)
{
	struct cache *ca = c->cache;
	pthread_mutex_lock(&ca->lock);
	ca->pending--;
	pthread_mutex_unlock(&ca->lock);
}

bool cache_unreserve(struct cache_client *c, int err)
{
	struct cache *ca = c->cache;
	pthread_mutex_lock(&ca->lock);
	ca->pending--;
	ca->used -= CACHE_BLOCK;
	c->blocks--;
	uint64_t n = 0;
	if (err == ENOSPC || err == EDQUOT)
		n = evict_blocks(ca, batch_size(ca, CACHE_NOSPACE), 0);
	bool reask = ca->nreask > 0;
	pthread_mutex_unlock(&ca->lock);
	if (reask)
		reask_clients(ca);
	return n > 0;
}

void cache_pause(struct cache_client *c, enum cache_pause why)
{
	struct cache *ca = c->cache;
	pthread_mutex_lock(&ca->lock);
	pause_locked(ca, c, why);
	pthread_mutex_unlock(&ca->lock);
}

void cache_release(struct cache_client *c, uint64_t n)
{
	struct cache *ca = c->cache;
	if (!ca || n == 0)
		return;
	pthread_mutex_lock(&ca->lock);
	c->blocks -= n;
	ca->used -= n * CACHE_BLOCK;
	bool wake = ca->npaused > 0;
	pthread_mutex_unlock(&ca->lock);
	if (wake)
		resume_paused(ca);
}

void cache_get_stats(struct cache *ca, struct cache_stats *out)
{
	pthread_mutex_lock(&ca->lock);
	out->limit = ca->limit;
	out->min_free_pct = ca->min_free_pct;
	out->min_free = ca->min_free;
	uint64_t avail, total;
	if (ca->min_free_pct >= 0 && free_space(ca, &avail, &total))
		out->min_free = min_free_of(ca, total);
	out->used = ca->used;
	out->evictions = ca->evictions;
	out->evicted = ca->evictions * CACHE_BLOCK;
	out->paused = ca->npaused;
	pthread_mutex_unlock(&ca->lock);
}
