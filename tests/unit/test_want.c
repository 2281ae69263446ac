/*
 * test_want.c - unit tests for random access in stream.c: stream_want(),
 * stream_unwant(), stream_set_fetch_distance() and stream_run_end(), against
 * the contract in include/streamfs/stream.h.
 *
 * The source here is a "fetching" fake: its fetch() op records every call
 * (offset, length) and, depending on the test, does nothing else (the
 * transfer is "in flight"), declines at once with stream_unwant(), or
 * writes the range at once with stream_write() (all from inside fetch(),
 * which therefore must be called without the stream lock: a deadlock trips
 * the 60 s watchdog). Streams made with the plain fake source of
 * fake_source.c have no fetch() and must ignore stream_want().
 *
 * What is checked:
 *  - no fetch() for ranges already present, nor for ranges already asked
 *    for (in flight), wherever they lie;
 *  - the parts of a wanted range that are neither present nor asked for
 *    are asked for, each once: a range is split around present and wanted
 *    parts and merged with nothing already asked;
 *  - nothing nearer to the frontier than the fetch distance is asked for;
 *  - stream_unwant() forgets a range (in part, too), so a later want asks
 *    again;
 *  - no fetch() on a stream that is idle, complete, failed or cancelled;
 *    the range is clipped at an announced length;
 *  - a parked reader is answered when fetch() brings its range;
 *  - concurrent wants from many threads never ask for a byte twice.
 */
#include "fake_source.h"
#include "streamfs/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KIB 1024ULL
#define MIB (1024ULL * 1024)

/* ---- the fetching fake source ----------------------------------------- */

enum fetch_mode {
	F_RECORD,  /* record only: the range stays "in flight" */
	F_DECLINE, /* record, then stream_unwant() it at once */
	F_WRITE,   /* record, then stream_write() pat() bytes for it at once */
};

#define MAX_CALLS 100000

struct call {
	uint64_t off, len;
};

struct fsrc {
	pthread_mutex_t m;
	enum fetch_mode mode;
	struct call *calls;
	size_t n;
	atomic_int starts, cancels, destroys;
	atomic_int write_errors;
	atomic_int fill_wanted; /* calls of fill_wanted() */
};

static int fsrc_start(struct stream *s, void *src)
{
	struct fsrc *f = src;
	(void)s;
	atomic_fetch_add(&f->starts, 1);
	return 0;
}

static void fsrc_cancel(struct stream *s, void *src)
{
	struct fsrc *f = src;
	(void)s;
	atomic_fetch_add(&f->cancels, 1);
}

static void fsrc_destroy(void *src)
{
	struct fsrc *f = src;
	atomic_fetch_add(&f->destroys, 1);
}

static void fsrc_fetch(struct stream *s, void *src, uint64_t off, uint64_t len)
{
	struct fsrc *f = src;
	pthread_mutex_lock(&f->m);
	if (f->n < MAX_CALLS)
		f->calls[f->n++] = (struct call){off, len};
	enum fetch_mode mode = f->mode;
	pthread_mutex_unlock(&f->m);
	if (mode == F_DECLINE) {
		stream_unwant(s, off, len);
	} else if (mode == F_WRITE) {
		unsigned char *b = malloc(len ? len : 1);
		pat_fill(b, off, len);
		if (stream_write(s, off, b, len) < 0)
			atomic_fetch_add(&f->write_errors, 1);
		free(b);
	}
}

static void fsrc_fill_wanted(struct stream *s, void *src)
{
	struct fsrc *f = src;
	(void)s;
	atomic_fetch_add(&f->fill_wanted, 1);
}

static const struct stream_source_ops fetch_ops = {
    .kind = "fake",
    .start = fsrc_start,
    .cancel = fsrc_cancel,
    .destroy = fsrc_destroy,
    .fetch = fsrc_fetch,
    .fill_wanted = fsrc_fill_wanted,
};

static struct stream *fsrc_stream(struct fsrc *f, bool start)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->m, NULL);
	f->calls = calloc(MAX_CALLS, sizeof(*f->calls));
	if (!f->calls)
		abort();
	struct store *st = store_open(NULL, "t");
	if (!st) {
		perror("store_open");
		abort();
	}
	struct stream *s = stream_new("w", st, &fetch_ops, f);
	if (!s) {
		perror("stream_new");
		abort();
	}
	if (start)
		CHECK_EQ(stream_start(s), 0);
	return s;
}

static void fsrc_finish(struct stream *s, struct fsrc *f)
{
	stream_cancel(s, NULL); /* a no-op on a terminal stream */
	stream_unref(s);
	CHECK_EQ(atomic_load(&f->destroys), 1);
	CHECK_EQ(atomic_load(&f->write_errors), 0);
	free(f->calls);
	pthread_mutex_destroy(&f->m);
}

static size_t ncalls(struct fsrc *f)
{
	pthread_mutex_lock(&f->m);
	size_t n = f->n;
	pthread_mutex_unlock(&f->m);
	return n;
}

static void clear_calls(struct fsrc *f)
{
	pthread_mutex_lock(&f->m);
	f->n = 0;
	pthread_mutex_unlock(&f->m);
}

/* True if exactly one call so far asked for [off, off+len). */
static bool called_once(struct fsrc *f, uint64_t off, uint64_t len)
{
	int k = 0;
	pthread_mutex_lock(&f->m);
	for (size_t i = 0; i < f->n; i++)
		if (f->calls[i].off == off && f->calls[i].len == len)
			k++;
	pthread_mutex_unlock(&f->m);
	return k == 1;
}

/* The bytes of [off, end) that the calls so far asked for, counting a byte
 * asked twice twice. */
static uint64_t asked_in(struct fsrc *f, uint64_t off, uint64_t end)
{
	uint64_t t = 0;
	pthread_mutex_lock(&f->m);
	for (size_t i = 0; i < f->n; i++) {
		uint64_t a = f->calls[i].off, b = f->calls[i].off + f->calls[i].len;
		if (a < off)
			a = off;
		if (b > end)
			b = end;
		if (a < b)
			t += b - a;
	}
	pthread_mutex_unlock(&f->m);
	return t;
}

/* ---- tests ------------------------------------------------------------ */

/* A range with nothing present or asked: one fetch() for exactly it; the
 * same want again, or any want inside it, asks nothing more. */
static void test_first_want_then_in_flight(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 10 * MIB, 1 * MIB));
	stream_want(s, 10 * MIB, 1 * MIB);
	stream_want(s, 10 * MIB + 5, 100);
	stream_want(s, 11 * MIB - 1, 1);
	stream_want(s, 10 * MIB, 0); /* empty: nothing to do */
	CHECK_EQ(ncalls(&f), 1);
	fsrc_finish(s, &f);
}

/* Present bytes are never asked for: below the frontier, and in a run
 * written ahead of it. */
static void test_present_not_asked(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(pat_append(s, 0, 256 * KIB), 0);
	CHECK_EQ(pat_write(s, 8 * MIB, 512 * KIB), 0);
	stream_want(s, 0, 256 * KIB);
	stream_want(s, 100, 4096);
	stream_want(s, 8 * MIB, 512 * KIB);
	stream_want(s, 8 * MIB + 4096, 4096);
	CHECK_EQ(ncalls(&f), 0);
	CHECK_EQ(stream_run_end(s, 0), 256 * KIB);
	CHECK_EQ(stream_run_end(s, 8 * MIB + 1), 8 * MIB + 512 * KIB);
	CHECK_EQ(stream_run_end(s, 1 * MIB), 1 * MIB); /* missing: @off itself */
	CHECK_EQ(stream_run_end(s, 256 * KIB), 256 * KIB);
	fsrc_finish(s, &f);
}

/* A want that starts in present bytes asks only for what follows them. */
static void test_skip_present_head(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(pat_write(s, 8 * MIB, 512 * KIB), 0);
	stream_want(s, 8 * MIB + 100, 1 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 8 * MIB + 512 * KIB, 1 * MIB + 100 - 512 * KIB));
	/* Starting at the frontier's present run as well. */
	CHECK_EQ(pat_append(s, 0, 64 * KIB), 0);
	clear_calls(&f);
	stream_want(s, 0, 128 * KIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 64 * KIB, 64 * KIB));
	fsrc_finish(s, &f);
}

/* A want that starts in bytes already asked for asks only for what
 * follows them; one that starts in present bytes followed by asked ones
 * skips both. */
static void test_skip_wanted_head(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	stream_want(s, 4 * MIB, 1 * MIB); /* in flight: [4, 5) MiB */
	clear_calls(&f);
	stream_want(s, 4 * MIB + 10, 2 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 5 * MIB, 1 * MIB + 10));
	/* present [8,9) MiB, then in flight [9,10) MiB: a want from 8 MiB
	 * asks from 10 MiB. */
	CHECK_EQ(pat_write(s, 8 * MIB, 1 * MIB), 0);
	stream_want(s, 9 * MIB, 1 * MIB);
	clear_calls(&f);
	stream_want(s, 8 * MIB + 1, 3 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 10 * MIB, 1 * MIB + 1));
	fsrc_finish(s, &f);
}

/* A want that ends in present or asked bytes is cut there: the fetch never
 * covers them. */
static void test_cut_before_present_or_wanted(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(pat_write(s, 8 * MIB, 1 * MIB), 0);
	stream_want(s, 7 * MIB, 2 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 7 * MIB, 1 * MIB));
	stream_want(s, 20 * MIB, 1 * MIB);
	clear_calls(&f);
	stream_want(s, 19 * MIB + 4096, 1 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 19 * MIB + 4096, 1 * MIB - 4096));
	fsrc_finish(s, &f);
}

/* A want over holes around present and asked parts: every part that is
 * neither is asked for, each exactly once, and nothing else. */
static void test_split_around_parts(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	/* [0,1) hole, [1,2) present, [2,3) hole, [3,4) asked, [4,6) hole (MiB) */
	CHECK_EQ(pat_write(s, 1 * MIB, 1 * MIB), 0);
	stream_want(s, 3 * MIB, 1 * MIB);
	clear_calls(&f);
	stream_want(s, 0, 6 * MIB);
	CHECK(called_once(&f, 0, 1 * MIB));
	CHECK_EQ(asked_in(&f, 1 * MIB, 2 * MIB), 0);
	CHECK_EQ(asked_in(&f, 3 * MIB, 4 * MIB), 0);
	/* Each hole asked for completely and once, whether in one call or
	 * several. */
	CHECK_EQ(asked_in(&f, 2 * MIB, 3 * MIB), 1 * MIB);
	CHECK_EQ(asked_in(&f, 4 * MIB, 6 * MIB), 2 * MIB);
	/* Now all of [0, 6) MiB is present or asked: nothing more. */
	clear_calls(&f);
	stream_want(s, 0, 6 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	fsrc_finish(s, &f);
}

/* Neighbouring wants: the second asks only for its new bytes, and the
 * union is asked once. */
static void test_neighbours_not_twice(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	for (uint64_t i = 0; i < 64; i++)
		stream_want(s, 32 * MIB + i * 64 * KIB, 128 * KIB); /* overlapping by half */
	CHECK_EQ(asked_in(&f, 0, UINT64_MAX), 64 * 64 * KIB + 64 * KIB);
	CHECK_EQ(asked_in(&f, 32 * MIB, 32 * MIB + 65 * 64 * KIB), 65 * 64 * KIB);
	fsrc_finish(s, &f);
}

/* Nothing nearer to the frontier than the fetch distance is asked for;
 * ranges at the distance or further are. The distance follows the frontier. */
static void test_fetch_distance(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	stream_set_fetch_distance(s, 4 * MIB);
	CHECK_EQ(pat_append(s, 0, 1 * MIB), 0); /* frontier 1 MiB */
	stream_want(s, 1 * MIB, 64 * KIB);
	stream_want(s, 2 * MIB, 1 * MIB);
	stream_want(s, 5 * MIB - 1, 1);
	CHECK_EQ(ncalls(&f), 0);
	/* Whatever it asks for, never a byte within the distance. */
	stream_want(s, 3 * MIB, 4 * MIB);
	CHECK_EQ(asked_in(&f, 0, 5 * MIB), 0);
	clear_calls(&f);
	stream_want(s, 5 * MIB, 1 * MIB); /* exactly at the distance */
	CHECK(called_once(&f, 5 * MIB, 1 * MIB));
	clear_calls(&f);
	stream_want(s, 100 * MIB, 1 * MIB);
	CHECK(called_once(&f, 100 * MIB, 1 * MIB));
	/* The frontier moves on: what was near becomes nearer still. */
	CHECK_EQ(pat_append(s, 1 * MIB, 1 * MIB), 0); /* frontier 2 MiB */
	clear_calls(&f);
	stream_want(s, 5 * MIB + 512 * KIB, 64 * KIB); /* 3.5 MiB ahead: near */
	CHECK_EQ(ncalls(&f), 0);
	stream_want(s, 6 * MIB, 64 * KIB); /* 4 MiB ahead, and not asked yet */
	CHECK(called_once(&f, 6 * MIB, 64 * KIB));
	/* "Never" (the URL source without ranges): nothing at all. */
	stream_set_fetch_distance(s, UINT64_MAX);
	clear_calls(&f);
	stream_want(s, 200 * MIB, 1 * MIB);
	stream_want(s, UINT64_MAX / 2, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	/* Back to 0: right at the frontier is fine. */
	stream_set_fetch_distance(s, 0);
	stream_want(s, 2 * MIB, 4096);
	CHECK(called_once(&f, 2 * MIB, 4096));
	fsrc_finish(s, &f);
}

/* stream_unwant() forgets: a later want asks again, for exactly what was
 * forgotten. */
static void test_unwant_asks_again(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	stream_want(s, 10 * MIB, 2 * MIB);
	stream_unwant(s, 10 * MIB, 2 * MIB);
	clear_calls(&f);
	stream_want(s, 10 * MIB, 2 * MIB);
	CHECK(called_once(&f, 10 * MIB, 2 * MIB));
	CHECK_EQ(ncalls(&f), 1);
	/* Forget the middle only: a want over all asks for the middle only. */
	stream_unwant(s, 10 * MIB + 512 * KIB, 512 * KIB);
	clear_calls(&f);
	stream_want(s, 10 * MIB, 2 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 10 * MIB + 512 * KIB, 512 * KIB));
	/* Unwanting what was never asked for is harmless. */
	stream_unwant(s, 50 * MIB, 1 * MIB);
	stream_unwant(s, 0, 0);
	clear_calls(&f);
	stream_want(s, 10 * MIB, 2 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	fsrc_finish(s, &f);
}

/* A source that declines from inside fetch() (no stream lock held there):
 * every want asks again. */
static void test_decline_inside_fetch(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	f.mode = F_DECLINE;
	stream_want(s, 10 * MIB, 1 * MIB);
	stream_want(s, 10 * MIB, 1 * MIB);
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 3);
	fsrc_finish(s, &f);
}

/* A parked reader is answered by the bytes fetch() brings (written from
 * inside fetch(): no lock held), with the right bytes; the frontier is
 * not moved by them. */
static void test_fetch_answers_reader(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(stream_set_length(s, 64 * MIB), 0);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 64 * MIB - 64 * KIB, 64 * KIB);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	f.mode = F_WRITE;
	stream_want(s, 64 * MIB - 64 * KIB, 1 * MIB); /* clipped at the length */
	CHECK(called_once(&f, 64 * MIB - 64 * KIB, 64 * KIB));
	CHECK_EQ(rec_join(&r), 64 * KIB);
	unsigned char *b = malloc(64 * KIB);
	CHECK_EQ(stream_read(s, b, 64 * KIB, 64 * MIB - 64 * KIB, false), 64 * KIB);
	CHECK(pat_ok(b, 64 * MIB - 64 * KIB, 64 * KIB));
	free(b);
	struct stream_info in;
	stream_get_info(s, &in);
	CHECK_EQ(in.state, STREAM_RUNNING);
	CHECK_EQ(in.frontier, 0);
	CHECK_EQ(in.bytes, 64 * KIB);
	rec_fini(&r);
	fsrc_finish(s, &f);
}

/*
 * stream_hold_fill(): the first reader that parks for bytes only the fill
 * brings (at the frontier, not asked of fetch()) calls fill_wanted(), once;
 * readers answered at once, readers of fetched ranges and readers of the
 * length do not.
 */
static void test_hold_fill_woken_by_frontier_reader(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(stream_set_length(s, 64 * MIB), 0);
	stream_set_fetch_distance(s, 1 * MIB);
	CHECK_EQ(pat_append(s, 0, 64 * KIB), 0);
	CHECK(stream_hold_fill(s));

	unsigned char *b = malloc(64 * KIB);
	CHECK_EQ(stream_read(s, b, 4096, 0, false), 4096); /* present: no park */
	free(b);
	struct rec size, far, near, near2;
	rec_init(&size, STREAM_WAIT_SIZE, 0, 0);
	CHECK(stream_wait(s, &size.w) != STREAM_PARKED); /* the length is known */
	rec_init(&far, STREAM_WAIT_RANGE, 32 * MIB, 4096);
	stream_want(s, 32 * MIB, 4096);
	CHECK(called_once(&f, 32 * MIB, 4096));
	CHECK_EQ(stream_wait(s, &far.w), STREAM_PARKED);
	CHECK_EQ(atomic_load(&f.fill_wanted), 0); /* a fetch brings it */

	rec_init(&near, STREAM_WAIT_RANGE, 64 * KIB, 4096);
	stream_want(s, 64 * KIB, 4096); /* near the frontier: not asked */
	CHECK_EQ(stream_wait(s, &near.w), STREAM_PARKED);
	CHECK_EQ(atomic_load(&f.fill_wanted), 1);
	rec_init(&near2, STREAM_WAIT_RANGE, 128 * KIB, 4096);
	CHECK_EQ(stream_wait(s, &near2.w), STREAM_PARKED);
	CHECK_EQ(atomic_load(&f.fill_wanted), 1); /* once per hold */

	/* A reader already waits for the fill: nothing is held. */
	CHECK(!stream_hold_fill(s));
	CHECK_EQ(pat_append(s, 64 * KIB, 128 * KIB), 0);
	CHECK_EQ(rec_join(&near), 4096);
	CHECK_EQ(rec_join(&near2), 4096);
	CHECK_EQ(pat_write(s, 32 * MIB, 4096), 0);
	CHECK_EQ(rec_join(&far), 4096);
	rec_fini(&size);
	rec_fini(&far);
	rec_fini(&near);
	rec_fini(&near2);
	fsrc_finish(s, &f);
}

/* A reader of the end (an unknown length) waits for the fill; a hold the
 * source released calls nothing. */
static void test_hold_fill_end_and_release(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK(stream_hold_fill(s));
	stream_release_fill(s);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 0, 4096);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(atomic_load(&f.fill_wanted), 0);
	CHECK(!stream_hold_fill(s)); /* that reader waits for the fill */

	CHECK_EQ(pat_append(s, 0, 8192), 0);
	CHECK_EQ(rec_join(&r), 4096);
	CHECK(stream_hold_fill(s));
	struct rec end;
	rec_init(&end, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &end.w), STREAM_PARKED);
	CHECK_EQ(atomic_load(&f.fill_wanted), 1);
	stream_end(s);
	CHECK_EQ(rec_join(&end), 0);
	rec_fini(&r);
	rec_fini(&end);
	fsrc_finish(s, &f);
}

/* The announced length clips a want; one wholly past it asks nothing. */
static void test_clip_at_length(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	CHECK_EQ(stream_set_length(s, 10 * MIB), 0);
	stream_want(s, 9 * MIB, 4 * MIB);
	CHECK_EQ(ncalls(&f), 1);
	CHECK(called_once(&f, 9 * MIB, 1 * MIB));
	clear_calls(&f);
	stream_want(s, 10 * MIB, 1 * MIB);
	stream_want(s, 11 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	fsrc_finish(s, &f);
}

/* Only a running stream asks: idle (not started), complete, failed and
 * cancelled ones never call fetch(). */
static void test_not_running(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, false);
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	CHECK_EQ(atomic_load(&f.starts), 0); /* and a want does not start it */
	fsrc_finish(s, &f);

	s = fsrc_stream(&f, true);
	CHECK_EQ(pat_append(s, 0, 4096), 0);
	stream_end(s);
	stream_want(s, 0, 1 * MIB);
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	fsrc_finish(s, &f);

	s = fsrc_stream(&f, true);
	CHECK_EQ(pat_append(s, 0, 4096), 0);
	stream_fail(s, EIO, "test failure");
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	fsrc_finish(s, &f);

	s = fsrc_stream(&f, true);
	stream_cancel(s, "test");
	stream_want(s, 10 * MIB, 1 * MIB);
	CHECK_EQ(ncalls(&f), 0);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	fsrc_finish(s, &f);
}

/* A source without fetch() (command, pipe, stdin): want and unwant are
 * no-ops, and reads work as before. */
static void test_no_fetch_op(void)
{
	struct fake_src f;
	fake_init(&f);
	struct stream *s = fake_stream(&f, NULL, "nofetch");
	stream_want(s, 0, 1 * MIB); /* idle */
	CHECK_EQ(stream_start(s), 0);
	stream_set_fetch_distance(s, 0);
	stream_want(s, 0, 1 * MIB);
	stream_want(s, 100 * MIB, 1 * MIB);
	stream_unwant(s, 100 * MIB, 1 * MIB);
	CHECK_EQ(pat_append(s, 0, 8192), 0);
	unsigned char b[8192];
	CHECK_EQ(stream_read(s, b, sizeof(b), 0, false), 8192);
	CHECK(pat_ok(b, 0, sizeof(b)));
	stream_end(s);
	CHECK_EQ(stream_read(s, b, sizeof(b), 8192, false), 0);
	stream_unref(s);
	CHECK_EQ(atomic_load(&f.destroys), 1);
	fake_fini(&f);
}

/* Many threads want overlapping ranges at once: no byte is asked for
 * twice, and every wanted byte is asked for once the dust settles. */
struct race_arg {
	struct stream *s;
	uint64_t seed;
};

static void *race_thread(void *p)
{
	struct race_arg *a = p;
	uint64_t x = a->seed;
	for (int i = 0; i < 2000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t off = (x % 4096) * 4096;
		uint64_t len = ((x >> 20) % 64 + 1) * 4096;
		stream_want(a->s, off, len);
	}
	return NULL;
}

static void test_concurrent_wants(void)
{
	struct fsrc f;
	struct stream *s = fsrc_stream(&f, true);
	enum { T = 4 };
	pthread_t th[T];
	struct race_arg args[T];
	for (int i = 0; i < T; i++) {
		args[i] = (struct race_arg){s, 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1)};
		if (pthread_create(&th[i], NULL, race_thread, &args[i]) != 0)
			abort();
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	/* Disjoint calls: sort by offset, then no overlap. */
	pthread_mutex_lock(&f.m);
	size_t n = f.n;
	struct call *c = malloc((n ? n : 1) * sizeof(*c));
	memcpy(c, f.calls, n * sizeof(*c));
	pthread_mutex_unlock(&f.m);
	for (size_t i = 1; i < n; i++) { /* insertion sort: n is small */
		struct call k = c[i];
		size_t j = i;
		while (j > 0 && c[j - 1].off > k.off) {
			c[j] = c[j - 1];
			j--;
		}
		c[j] = k;
	}
	bool disjoint = true;
	for (size_t i = 1; i < n; i++)
		if (c[i - 1].off + c[i - 1].len > c[i].off)
			disjoint = false;
	CHECK(disjoint);
	CHECK(n > 0);
	free(c);
	/* One more pass over everything, single-threaded, until it asks
	 * nothing: then every byte of [0, 16 MiB + 256 KiB) was asked once. */
	for (int pass = 0; pass < 1000; pass++) {
		size_t before = ncalls(&f);
		stream_want(s, 0, 4096 * 4096 + 64 * 4096);
		if (ncalls(&f) == before)
			break;
	}
	CHECK_EQ(asked_in(&f, 0, UINT64_MAX), 4096 * 4096 + 64 * 4096);
	fsrc_finish(s, &f);
}

int main(void)
{
	t_init();
	RUN(test_first_want_then_in_flight);
	RUN(test_present_not_asked);
	RUN(test_skip_present_head);
	RUN(test_skip_wanted_head);
	RUN(test_cut_before_present_or_wanted);
	RUN(test_split_around_parts);
	RUN(test_neighbours_not_twice);
	RUN(test_fetch_distance);
	RUN(test_unwant_asks_again);
	RUN(test_decline_inside_fetch);
	RUN(test_fetch_answers_reader);
	RUN(test_hold_fill_woken_by_frontier_reader);
	RUN(test_hold_fill_end_and_release);
	RUN(test_clip_at_length);
	RUN(test_not_running);
	RUN(test_no_fetch_op);
	RUN(test_concurrent_wants);
	return t_finish("want");
}
