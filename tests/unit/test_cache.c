/*
 * test_cache.c - unit tests for the store budget (cache.c) and the
 * stream's side of it (blocks held, eviction, pins, pausing, keep=), with
 * a scripted source and no FUSE.
 *
 * The source here can fetch (writes pat() bytes for the range asked, from
 * inside fetch(), like test_want.c's F_WRITE mode) and counts resume()
 * calls. The budget is a few 1 MiB blocks, the store a memfd, min_free
 * off, so every number below is exact.
 *
 * What is checked:
 *  - the budget holds: a write that needs a block over it returns
 *    -ENOBUFS, writes nothing, and the stream says "paused: cache full";
 *  - freeing blocks (a stream going away) resumes paused streams;
 *  - eviction takes blocks already read first, least recently used first,
 *    never a block a parked reader needs, and only from evictable streams;
 *  - evicted bytes read again are fetched again, right bytes, also after
 *    the stream is complete; a complete stream whose refetch fails for
 *    good fails (FAILED), its present bytes stay readable;
 *  - a speculative fill (STREAM_AHEAD) evicts only read blocks, pauses
 *    otherwise, and goes on once a reader has used a block;
 *  - keep=: old whole blocks are dropped, reads there get -ENODATA, the
 *    live edge reads, the budget stays bounded by keep;
 *  - the frontier never moves back.
 */
#include "fake_source.h"
#include "streamfs/cache.h"
#include "streamfs/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024ULL * 1024)

/* Ranges whose fetch found no room: paused transfers, which go on at the
 * next resume() and keep their claim (they stay asked for) meanwhile, as
 * the URL source's paused range transfers do. */
struct held_range {
	uint64_t off, len;
};

struct csrc {
	atomic_int resumes, fetches, destroys;
	atomic_bool fetch_off; /* fetch() records only */
	pthread_mutex_t lock;  /* guards paused, npaused */
	struct held_range paused[64];
	int npaused;
};

static int csrc_start(struct stream *s, void *src)
{
	return 0;
}

static void csrc_cancel(struct stream *s, void *src)
{
}

static void csrc_destroy(void *src)
{
	struct csrc *c = src;
	atomic_fetch_add(&c->destroys, 1);
}

/* Write [off, off+len) of the pattern. Returns false if there was no
 * room: the caller keeps the range as a paused transfer. */
static bool csrc_write(struct stream *s, uint64_t off, uint64_t len)
{
	unsigned char *b = malloc(len);
	pat_fill(b, off, len);
	int r = stream_write(s, off, b, len);
	free(b);
	if (r != -ENOBUFS && r != -ECANCELED)
		CHECK_EQ(r, 0);
	return r != -ENOBUFS;
}

static void csrc_pause(struct csrc *c, uint64_t off, uint64_t len)
{
	pthread_mutex_lock(&c->lock);
	CHECK(c->npaused < 64);
	if (c->npaused < 64)
		c->paused[c->npaused++] = (struct held_range){off, len};
	pthread_mutex_unlock(&c->lock);
}

/* The paused transfers go on: each writes, or pauses again. */
static void csrc_go_on(struct stream *s, struct csrc *c)
{
	for (;;) {
		/* A resume while we held the list found it empty: if one of our
		 * writes then failed and went back on it, nobody else would
		 * try it again (a lost wake-up of this fake, which has no
		 * loop thread to serialise pause and resume, nor the daemon's
		 * once-a-second backstop). So go round again. */
		int seen = atomic_load(&c->resumes);
		pthread_mutex_lock(&c->lock);
		int n = c->npaused;
		struct held_range todo[64];
		memcpy(todo, c->paused, (size_t)n * sizeof(todo[0]));
		c->npaused = 0;
		pthread_mutex_unlock(&c->lock);
		bool again = false;
		for (int i = 0; i < n; i++)
			if (!csrc_write(s, todo[i].off, todo[i].len)) {
				csrc_pause(c, todo[i].off, todo[i].len);
				again = true;
			}
		if (!again || atomic_load(&c->resumes) == seen)
			return;
	}
}

static void csrc_fetch(struct stream *s, void *src, uint64_t off, uint64_t len)
{
	struct csrc *c = src;
	atomic_fetch_add(&c->fetches, 1);
	if (atomic_load(&c->fetch_off))
		return;
	int seen = atomic_load(&c->resumes);
	if (!csrc_write(s, off, len)) {
		csrc_pause(c, off, len);
		/* A resume that came before we were on the paused list did not
		 * see us: go on at once, as a transfer resumed then would. */
		if (atomic_load(&c->resumes) != seen)
			csrc_go_on(s, c);
	}
}

static void csrc_resume(struct stream *s, void *src)
{
	struct csrc *c = src;
	atomic_fetch_add(&c->resumes, 1);
	csrc_go_on(s, c);
}

static const struct stream_source_ops csrc_ops = {
    .kind = "fake",
    .start = csrc_start,
    .cancel = csrc_cancel,
    .destroy = csrc_destroy,
    .fetch = csrc_fetch,
    .resume = csrc_resume,
};

static const struct stream_source_ops plain_ops = {
    .kind = "fake",
    .start = csrc_start,
    .cancel = csrc_cancel,
    .destroy = csrc_destroy,
    .resume = csrc_resume,
};

static struct stream *mk(struct cache *ca, struct csrc *c, bool evictable)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	struct store *st = store_open(NULL, "t");
	struct stream *s = stream_new("c", st, evictable ? &csrc_ops : &plain_ops, c);
	if (!s)
		abort();
	stream_set_cache(s, ca);
	CHECK_EQ(stream_start(s), 0);
	if (evictable)
		stream_set_evictable(s, true);
	return s;
}

static int put_block(struct stream *s, uint64_t b, unsigned flags)
{
	unsigned char *buf = malloc(MIB);
	pat_fill(buf, b * MIB, MIB);
	int r = stream_write_flags(s, b * MIB, buf, MIB, flags, NULL);
	free(buf);
	return r;
}

static bool read_ok(struct stream *s, uint64_t off, size_t len)
{
	unsigned char *buf = malloc(len);
	ssize_t n = stream_read(s, buf, len, off, false);
	bool ok = n == (ssize_t)len && pat_ok(buf, off, len);
	free(buf);
	return ok;
}

static bool present(struct stream *s, uint64_t b)
{
	return stream_run_end(s, b * MIB) >= (b + 1) * MIB;
}

static uint64_t used(struct cache *ca)
{
	struct cache_stats st;
	cache_get_stats(ca, &st);
	return st.used;
}

static void test_budget_pauses_and_release_resumes(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1, c2;
	struct stream *a = mk(ca, &c1, false), *b = mk(ca, &c2, false);
	for (uint64_t i = 0; i < 3; i++)
		CHECK_EQ(put_block(a, i, 0), 0);
	CHECK_EQ(put_block(b, 0, 0), 0);
	CHECK_EQ(used(ca), 4 * MIB);
	/* Nothing evictable: the fifth block pauses, nothing written. */
	CHECK_EQ(put_block(b, 1, 0), -ENOBUFS);
	CHECK_EQ(used(ca), 4 * MIB);
	struct stream_info in;
	stream_get_info(b, &in);
	CHECK_EQ(in.paused, CACHE_FULL);
	CHECK_EQ(in.held, MIB);
	CHECK_EQ(in.store, MIB);
	CHECK(!present(b, 1));
	/* Reads of present bytes go on. */
	CHECK(read_ok(b, 0, MIB));
	/* The first stream goes away: its blocks are free, b is told. */
	stream_cancel(a, NULL);
	stream_unref(a);
	CHECK_EQ(atomic_load(&c2.resumes), 1);
	stream_get_info(b, &in);
	CHECK_EQ(in.paused, CACHE_RUN);
	CHECK_EQ(put_block(b, 1, 0), 0);
	CHECK(read_ok(b, 0, 2 * MIB));
	CHECK_EQ(used(ca), 2 * MIB);
	stream_cancel(b, NULL);
	stream_unref(b);
	CHECK_EQ(used(ca), 0);
	cache_free(ca);
}

static void test_lru_read_first(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	atomic_store(&c1.fetch_off, true);
	for (uint64_t i = 0; i < 4; i++)
		CHECK_EQ(put_block(s, i, 0), 0);
	CHECK(read_ok(s, 3 * MIB, MIB)); /* read: 3 then 1 */
	CHECK(read_ok(s, 1 * MIB, MIB));
	/* Block 4: one batch evicts 2 blocks, read ones first, oldest
	 * first: 3, then 1. 0 and 2 (never read) stay. */
	CHECK_EQ(put_block(s, 4, 0), 0);
	CHECK(present(s, 0));
	CHECK(!present(s, 1));
	CHECK(present(s, 2));
	CHECK(!present(s, 3));
	CHECK(present(s, 4));
	CHECK_EQ(used(ca), 3 * MIB);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.evicted, 2 * MIB);
	CHECK_EQ(in.frontier, 5 * MIB); /* the frontier never moves back */
	CHECK_EQ(in.bytes, 5 * MIB);    /* every byte was received once */
	CHECK_EQ(in.held, 3 * MIB);
	/* The unread ones go next, oldest first. */
	CHECK_EQ(put_block(s, 5, 0), 0);
	CHECK_EQ(put_block(s, 6, 0), 0);
	CHECK(!present(s, 0));
	CHECK_EQ(used(ca) <= 4 * MIB, 1);
	struct cache_stats st;
	cache_get_stats(ca, &st);
	CHECK(st.evictions >= 3);
	stream_cancel(s, NULL);
	stream_unref(s);
	cache_free(ca);
}

struct reader {
	struct stream *s;
	uint64_t off;
	size_t len;
	bool ok;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	r->ok = read_ok(r->s, r->off, r->len);
	return NULL;
}

static void wait_waiters(struct stream *s, unsigned n)
{
	struct stream_info in;
	for (;;) {
		stream_get_info(s, &in);
		if (in.waiters >= n)
			return;
		sched_yield();
	}
}

static void test_parked_reader_pins(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	atomic_store(&c1.fetch_off, true); /* block 3's second half: the test brings it */
	CHECK_EQ(put_block(s, 0, 0), 0);
	CHECK_EQ(put_block(s, 1, 0), 0);
	CHECK_EQ(put_block(s, 2, 0), 0);
	unsigned char half[MIB / 2];
	pat_fill(half, 3 * MIB, sizeof(half));
	CHECK_EQ(stream_write(s, 3 * MIB, half, sizeof(half)), 0);
	CHECK(read_ok(s, 3 * MIB, MIB / 2)); /* block 3 is the oldest read */
	CHECK(read_ok(s, 0, 3 * MIB));
	struct reader r = {.s = s, .off = 3 * MIB, .len = MIB};
	pthread_t t;
	pthread_create(&t, NULL, reader_main, &r);
	wait_waiters(s, 1);
	CHECK_EQ(put_block(s, 4, 0), 0); /* evicts 2: not 3 (pinned): 0 and 1 */
	CHECK(!present(s, 0));
	CHECK(!present(s, 1));
	CHECK(present(s, 2));
	CHECK(stream_run_end(s, 3 * MIB) == 3 * MIB + MIB / 2);
	pat_fill(half, 3 * MIB + MIB / 2, sizeof(half));
	CHECK_EQ(stream_write(s, 3 * MIB + MIB / 2, half, sizeof(half)), 0);
	pthread_join(t, NULL);
	CHECK(r.ok);
	stream_cancel(s, NULL);
	stream_unref(s);
	cache_free(ca);
}

static void test_refetch_after_complete(void)
{
	struct cache *ca = cache_new(NULL, 3 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	for (uint64_t i = 0; i < 6; i++)
		CHECK_EQ(put_block(s, i, 0), 0);
	stream_end(s);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_COMPLETE);
	CHECK_EQ(in.length, 6 * MIB);
	CHECK(!present(s, 0));
	/* A read of evicted bytes of a complete stream fetches them again
	 * (reads of at most a block: a read bigger than the budget could
	 * never be answered). */
	for (uint64_t i = 0; i < 6; i++)
		CHECK(read_ok(s, i * MIB, MIB));
	CHECK(atomic_load(&c1.fetches) > 0);
	CHECK(used(ca) <= 3 * MIB);
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_COMPLETE);
	/* The refetch fails for good (the resource changed): FAILED, and a
	 * read of missing bytes gets EIO while present ones still read. */
	atomic_store(&c1.fetch_off, true);
	uint64_t hole = 0;
	while (present(s, hole))
		hole++;
	uint64_t kept = hole ? 0 : 5;
	struct reader r = {.s = s, .off = hole * MIB, .len = 4096};
	pthread_t t;
	pthread_create(&t, NULL, reader_main, &r);
	wait_waiters(s, 1);
	stream_fail(s, EIO, "the resource changed on the server");
	pthread_join(t, NULL);
	CHECK(!r.ok);
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_FAILED);
	unsigned char b[16];
	CHECK_EQ(stream_read(s, b, sizeof(b), hole * MIB, false), -EIO);
	if (present(s, kept))
		CHECK(read_ok(s, kept * MIB, 4096));
	stream_unref(s);
	CHECK_EQ(used(ca), 0);
	cache_free(ca);
}

/* stream_hold_whole(): only a complete stream with every byte in the
 * store, the store's file exactly its length; nothing of it is evicted
 * while held, and once let go others get room from it again. */
static void test_hold_whole(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1, c2;
	struct stream *s = mk(ca, &c1, true);
	atomic_store(&c1.fetch_off, true);
	CHECK_EQ(put_block(s, 0, 0), 0);
	CHECK_EQ(put_block(s, 1, 0), 0);
	CHECK_EQ(stream_hold_whole(s), -1); /* still running */
	stream_end(s);
	int fd = stream_hold_whole(s);
	CHECK(fd >= 0);
	unsigned char buf[4096];
	CHECK_EQ(pread(fd, buf, sizeof(buf), 2 * MIB - 100), 100); /* ends where the stream does */
	CHECK(pat_ok(buf, 2 * MIB - 100, 100));
	CHECK(stream_hold_whole(s) == fd); /* holds nest */
	stream_release_whole(s);
	/* Another stream wants room; the held stream's blocks are the only
	 * evictable ones: it pauses instead. */
	struct stream *o = mk(ca, &c2, false);
	CHECK_EQ(put_block(o, 0, 0), 0);
	CHECK_EQ(put_block(o, 1, 0), 0);
	CHECK_EQ(put_block(o, 2, 0), -ENOBUFS);
	CHECK(present(s, 0));
	CHECK(present(s, 1));
	/* Let go: the paused stream is told at once, and room is made. */
	int before = atomic_load(&c2.resumes);
	stream_release_whole(s);
	CHECK(atomic_load(&c2.resumes) > before);
	CHECK_EQ(put_block(o, 2, 0), 0);
	CHECK(!present(s, 0) || !present(s, 1));
	/* Complete, but not all of it in the store: not held. */
	CHECK_EQ(stream_hold_whole(s), -1);
	stream_cancel(o, NULL);
	stream_unref(o);
	stream_unref(s);
	cache_free(ca);
}

static void test_fetch_failed_wakes(void)
{
	struct cache *ca = cache_new(NULL, 2 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	for (uint64_t i = 0; i < 4; i++)
		CHECK_EQ(put_block(s, i, 0), 0);
	stream_end(s);
	CHECK(!present(s, 0));
	atomic_store(&c1.fetch_off, true);
	struct reader r = {.s = s, .off = 0, .len = 100};
	pthread_t t;
	pthread_create(&t, NULL, reader_main, &r);
	wait_waiters(s, 1);
	stream_fetch_failed(s, 0, MIB);
	pthread_join(t, NULL);
	CHECK(!r.ok);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_COMPLETE); /* a later read may try again */
	atomic_store(&c1.fetch_off, false);
	CHECK(read_ok(s, 0, 100));
	stream_unref(s);
	cache_free(ca);
}

static void test_ahead_evicts_only_read(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	atomic_store(&c1.fetch_off, true);
	for (uint64_t i = 0; i < 4; i++)
		CHECK_EQ(put_block(s, i, STREAM_AHEAD), 0);
	CHECK_EQ(put_block(s, 4, STREAM_AHEAD), -ENOBUFS);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.paused, CACHE_FULL);
	for (uint64_t i = 0; i < 4; i++)
		CHECK(present(s, i));
	/* A reader uses block 0: the fill is told to go on, and may evict it. */
	CHECK(read_ok(s, 0, MIB));
	CHECK_EQ(atomic_load(&c1.resumes), 1);
	CHECK_EQ(put_block(s, 4, STREAM_AHEAD), 0);
	CHECK(!present(s, 0));
	CHECK(present(s, 1));
	/* Not speculative: unread blocks go too. */
	CHECK_EQ(put_block(s, 5, 0), 0);
	CHECK(!present(s, 1));
	stream_cancel(s, NULL);
	stream_unref(s);
	cache_free(ca);
}

static void test_not_evictable_never_evicted(void)
{
	struct cache *ca = cache_new(NULL, 4 * MIB, 0, -1);
	struct csrc c1, c2;
	struct stream *cmd = mk(ca, &c1, false), *url = mk(ca, &c2, true);
	atomic_store(&c2.fetch_off, true);
	CHECK_EQ(put_block(cmd, 0, 0), 0);
	CHECK_EQ(put_block(cmd, 1, 0), 0);
	CHECK(read_ok(cmd, 0, 2 * MIB)); /* read, and older: still not evictable */
	CHECK_EQ(put_block(url, 0, 0), 0);
	CHECK_EQ(put_block(url, 1, 0), 0);
	/* The command needs room: the URL's blocks go, never its own. */
	CHECK_EQ(put_block(cmd, 2, 0), 0);
	CHECK_EQ(put_block(cmd, 3, 0), 0);
	CHECK(read_ok(cmd, 0, 4 * MIB));
	CHECK(!present(url, 0));
	CHECK(!present(url, 1));
	CHECK_EQ(put_block(cmd, 4, 0), -ENOBUFS);
	CHECK(read_ok(cmd, 0, 4 * MIB));
	stream_cancel(cmd, NULL);
	stream_unref(cmd);
	stream_cancel(url, NULL);
	stream_unref(url);
	cache_free(ca);
}

static void test_keep_drops_old_blocks(void)
{
	struct cache *ca = cache_new(NULL, 8 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, false);
	CHECK(!stream_drops_bytes(s)); /* a reply may be copied later (replier.c) */
	stream_set_keep(s, 2 * MIB);
	CHECK(stream_drops_bytes(s));
	unsigned char *buf = malloc(300000);
	uint64_t off = 0, max_used = 0;
	while (off < 40 * MIB) {
		pat_fill(buf, off, 300000);
		CHECK_EQ(stream_append(s, buf, 300000), 0);
		off += 300000;
		uint64_t u = used(ca);
		if (u > max_used)
			max_used = u;
	}
	free(buf);
	/* keep (2 blocks) + the block being filled + the one that just
	 * stopped being "entirely older than keep". */
	CHECK(max_used <= 4 * MIB);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.frontier, off);
	CHECK_EQ(in.bytes, off);
	CHECK(in.dropped >= off - 4 * MIB);
	unsigned char b[64];
	CHECK_EQ(stream_read(s, b, sizeof(b), 0, false), -ENODATA);
	CHECK_EQ(stream_read(s, b, sizeof(b), off - 5 * MIB, false), -ENODATA);
	CHECK(read_ok(s, off - 2 * MIB, 2 * MIB)); /* the last keep bytes */
	stream_end(s);
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_COMPLETE);
	CHECK_EQ(in.length, off);
	CHECK_EQ(stream_read(s, b, sizeof(b), 0, false), -ENODATA);
	CHECK_EQ(stream_read(s, b, sizeof(b), off, false), 0);
	stream_unref(s);
	cache_free(ca);
}

static void test_keep_without_budget(void)
{
	struct fake_src f;
	fake_init(&f);
	struct stream *s = fake_stream(&f, NULL, "k");
	stream_set_keep(s, 1);
	CHECK_EQ(stream_start(s), 0);
	unsigned char *buf = malloc(3 * MIB);
	pat_fill(buf, 0, 3 * MIB);
	CHECK_EQ(stream_append(s, buf, 3 * MIB), 0);
	free(buf);
	unsigned char b[8];
	CHECK_EQ(stream_read(s, b, sizeof(b), 0, false), -ENODATA);
	CHECK(read_ok(s, 3 * MIB - 8, 8));
	stream_cancel(s, NULL);
	stream_unref(s);
	fake_fini(&f);
}

static void test_eviction_while_readers_wait(void)
{
	/* Many readers of evicted ranges of a complete stream at once: all
	 * get the right bytes, the budget holds. */
	struct cache *ca = cache_new(NULL, 6 * MIB, 0, -1);
	struct csrc c1;
	struct stream *s = mk(ca, &c1, true);
	for (uint64_t i = 0; i < 24; i++)
		CHECK_EQ(put_block(s, i, 0), 0);
	stream_end(s);
	enum { N = 16 };
	struct reader r[N];
	pthread_t t[N];
	for (int i = 0; i < N; i++) {
		r[i] = (struct reader){
		    .s = s, .off = (uint64_t)i * 3 * MIB / 2 + 12345, .len = 200000};
		pthread_create(&t[i], NULL, reader_main, &r[i]);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		CHECK(r[i].ok);
	}
	CHECK(used(ca) <= 6 * MIB);
	stream_unref(s);
	cache_free(ca);
}

int main(void)
{
	t_init();
	RUN(test_budget_pauses_and_release_resumes);
	RUN(test_lru_read_first);
	RUN(test_parked_reader_pins);
	RUN(test_refetch_after_complete);
	RUN(test_hold_whole);
	RUN(test_fetch_failed_wakes);
	RUN(test_ahead_evicts_only_read);
	RUN(test_not_evictable_never_evicted);
	RUN(test_keep_drops_old_blocks);
	RUN(test_keep_without_budget);
	RUN(test_eviction_while_readers_wait);
	return t_finish("test_cache");
}
