/*
 * test_stream.c - unit tests for stream.c against the contract in
 * include/streamfs/stream.h (the stream contract S1-S10 of docs/DESIGN.md):
 * reads of every size and place, the four kinds of waiter, delayed errors,
 * truncation, lengths and the store's limit.
 *
 * The test plays the source: a fake source (fake_source.c) records
 * start/cancel/destroy, and the test produces with stream_append/write/
 * fill_fd/set_length/end/fail from its own thread or a producer thread.
 * Interleavings are forced with condition variables, barriers and joins,
 * never with sleeps: a parked waiter's done() is observed directly, and a
 * done() that blocks on a gate holds the producer inside the engine.
 *
 * Cancel, unwait, start and references under threads: test_stream_threads.c.
 * Random sequences against a model: test_stream_model.c.
 */
#include "stream_test.h"
#include "streamfs/store.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define GIB (1ULL << 30)

/* ---- basic reads ------------------------------------------------------ */

static void whole_read(const char *dir)
{
	struct fake_src f;
	struct stream *s = started(&f, dir);
	CHECK(strcmp(stream_name(s), "s") == 0);
	const uint64_t total = 1024 * 1024 + 3;
	uint64_t off = 0;
	while (off < total) {
		size_t n = 3 * 4096 + 1;
		if (n > total - off)
			n = (size_t)(total - off);
		CHECK_EQ(pat_append(s, off, n), 0);
		off += n;
	}
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.state, STREAM_RUNNING);
	CHECK_EQ(i.length, -1);
	CHECK_EQ(i.frontier, total);
	CHECK(i.start_ms > 0);
	CHECK_EQ(i.end_ms, 0);
	READ_EQ(s, 0, 100, false, 100);

	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, total);
	CHECK_EQ(i.bytes, total);
	CHECK_EQ(i.frontier, total);
	CHECK_EQ(i.waiters, 0);
	CHECK(i.end_ms >= i.start_ms);

	READ_EQ(s, 0, total, false, total);
	READ_EQ(s, 4095, 8193, false, 8193);
	READ_EQ(s, total - 10, 100, false, 10);
	READ_EQ(s, total - 5, 100, true, 5);
	READ_EQ(s, total, 100, false, 0);
	READ_EQ(s, total + 1000, 1, false, 0);
	READ_EQ(s, 0, 0, false, 0);

	/* A terminal stream is left alone; its source still hears of a
	 * cancel (once), to let go of what it holds. */
	CHECK_EQ(pat_append(s, total, 10), -ECANCELED);
	CHECK_EQ(stream_set_length(s, total), 0);
	CHECK_EQ(stream_set_length(s, total + 1), -EINVAL);
	stream_fail(s, EIO, "late");
	CHECK_EQ(atomic_load(&f.cancels), 0);
	stream_cancel(s, "late");
	stream_cancel(s, "later");
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, total);
	CHECK_EQ(atomic_load(&f.starts), 1);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	finish(s, &f);
}

static void test_whole_read_ram(void)
{
	whole_read(NULL);
}

static void test_whole_read_disk(void)
{
	char *dir = t_tmpdir("stream");
	whole_read(dir);
	CHECK_EQ(rmdir(dir), 0);
	free(dir);
}

/* Bytes far out in a sparse disk store (around 1 GiB): stream_copy
 * serves exactly the present range and refuses any range with a hole. */
static void test_sparse_far_out(void)
{
	char *dir = t_tmpdir("stream");
	struct fake_src f;
	struct stream *s = started(&f, dir);
	CHECK_EQ(pat_write(s, GIB - 5, 12), 0);

	unsigned char got[16];
	CHECK_EQ(stream_copy(s, got, 12, GIB - 5), 0);
	CHECK(pat_ok(got, GIB - 5, 12));
	CHECK_EQ(stream_copy(s, got, 12, GIB - 6), -ERANGE);
	CHECK_EQ(stream_copy(s, got, 13, GIB - 5), -ERANGE);
	CHECK_EQ(stream_copy(s, got, 1, 0), -ERANGE);
	CHECK_EQ(stream_copy(s, got, 0, 0), 0);
	READ_EQ(s, GIB - 5, 12, false, 12);
	READ_EQ(s, GIB - 1, 2, true, 2);

	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.bytes, 12);
	CHECK_EQ(i.frontier, 0);
	stream_cancel(s, NULL);
	finish(s, &f);
	CHECK_EQ(rmdir(dir), 0);
	free(dir);
}

static void test_tiny(void)
{
	struct fake_src f;
	struct stream_info i;

	/* 0 bytes: waiters parked before the end get 0. */
	struct stream *s = started(&f, NULL);
	struct rec rr, ra, re, rs;
	rec_init(&rr, STREAM_WAIT_RANGE, 0, 10);
	rec_init(&ra, STREAM_WAIT_ANY, 0, 10);
	rec_init(&re, STREAM_WAIT_END, 0, 0);
	rec_init(&rs, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &rr.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &ra.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &re.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &rs.w), STREAM_PARKED);
	info(s, &i);
	CHECK_EQ(i.waiters, 4);
	stream_end(s);
	CHECK_EQ(atomic_load(&rr.calls), 1);
	CHECK_EQ(atomic_load(&rr.result), 0);
	CHECK_EQ(atomic_load(&ra.calls), 1);
	CHECK_EQ(atomic_load(&ra.result), 0);
	CHECK_EQ(atomic_load(&re.calls), 1);
	CHECK_EQ(atomic_load(&re.result), 0);
	CHECK_EQ(atomic_load(&rs.calls), 1);
	CHECK_EQ(atomic_load(&rs.result), 0);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, 0);
	CHECK_EQ(i.waiters, 0);
	READ_EQ(s, 0, 10, false, 0);
	READ_EQ(s, 0, 10, true, 0);
	rec_reset(&rs, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &rs.w), 0);
	rec_reset(&re, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &re.w), 0);
	CHECK_EQ(atomic_load(&rs.calls) + atomic_load(&re.calls), 0);
	finish(s, &f);

	/* 1 byte. */
	s = started(&f, NULL);
	rec_reset(&rr, STREAM_WAIT_RANGE, 0, 10);
	CHECK_EQ(stream_wait(s, &rr.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 0, 1), 0);
	CHECK_EQ(atomic_load(&rr.calls), 0); /* a RANGE read wants all 10 */
	rec_reset(&ra, STREAM_WAIT_ANY, 0, 10);
	CHECK_EQ(stream_wait(s, &ra.w), 1);
	READ_EQ(s, 0, 1, false, 1);
	READ_EQ(s, 0, 10, true, 1);
	stream_end(s);
	CHECK_EQ(atomic_load(&rr.calls), 1);
	CHECK_EQ(atomic_load(&rr.result), 1);
	READ_EQ(s, 0, 10, false, 1);
	READ_EQ(s, 1, 10, false, 0);
	info(s, &i);
	CHECK_EQ(i.length, 1);
	finish(s, &f);
	rec_fini(&rr);
	rec_fini(&ra);
	rec_fini(&re);
	rec_fini(&rs);
}

/* A parked read is completed by the append that covers it, once. */
static void test_wait_woken(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct rec a, b;
	rec_init(&a, STREAM_WAIT_RANGE, 100, 50);
	rec_init(&b, STREAM_WAIT_RANGE, 300, 10);
	CHECK_EQ(stream_wait(s, &a.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &b.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 0, 120), 0);
	CHECK_EQ(atomic_load(&a.calls), 0);
	CHECK_EQ(pat_append(s, 120, 29), 0);
	CHECK_EQ(atomic_load(&a.calls), 0); /* one byte short */
	CHECK_EQ(pat_append(s, 149, 1), 0);
	CHECK_EQ(atomic_load(&a.calls), 1);
	CHECK_EQ(atomic_load(&a.result), 50);
	CHECK_EQ(atomic_load(&b.calls), 0);
	unsigned char got[50];
	CHECK_EQ(stream_copy(s, got, 50, 100), 0);
	CHECK(pat_ok(got, 100, 50));

	/* A sparse write ahead does not wake b until the gap is filled. */
	CHECK_EQ(pat_write(s, 305, 100), 0);
	CHECK_EQ(atomic_load(&b.calls), 0);
	CHECK_EQ(pat_append(s, 150, 150), 0);
	CHECK_EQ(atomic_load(&b.calls), 0);
	CHECK_EQ(pat_write(s, 300, 5), 0);
	CHECK_EQ(atomic_load(&b.calls), 1);
	CHECK_EQ(atomic_load(&b.result), 10);

	CHECK_EQ(pat_append(s, 300, 1000), 0); /* appends over present bytes */
	stream_end(s);
	CHECK_EQ(atomic_load(&a.calls), 1);
	CHECK_EQ(atomic_load(&b.calls), 1);
	READ_EQ(s, 0, 1300, false, 1300);
	finish(s, &f);
	rec_fini(&a);
	rec_fini(&b);
}

/* A waiter whose done() blocks: holds the producing thread inside the
 * engine, inside stream_append or stream_fail. */
struct gate {
	pthread_mutex_t m;
	pthread_cond_t c;
	bool entered, open;
	struct stream *s;
	struct stream_waiter w;
	atomic_int calls;
	atomic_llong result;
	struct stream_info seen; /* stream_get_info() from inside done() */
};

static void gate_done(struct stream_waiter *w, ssize_t r)
{
	struct gate *g = w->data;
	struct stream_info i;
	stream_get_info(g->s, &i); /* no stream lock may be held here */
	pthread_mutex_lock(&g->m);
	g->seen = i;
	atomic_store(&g->result, r);
	atomic_fetch_add(&g->calls, 1);
	g->entered = true;
	pthread_cond_broadcast(&g->c);
	while (!g->open)
		pthread_cond_wait(&g->c, &g->m);
	pthread_mutex_unlock(&g->m);
}

static void gate_init(struct gate *g, struct stream *s, enum stream_wait_kind kind, uint64_t off,
                      size_t len)
{
	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->m, NULL);
	pthread_cond_init(&g->c, NULL);
	g->s = s;
	stream_waiter_init(&g->w);
	g->w.kind = kind;
	g->w.off = off;
	g->w.len = len;
	g->w.done = gate_done;
	g->w.data = g;
}

static void gate_wait_entered(struct gate *g)
{
	pthread_mutex_lock(&g->m);
	while (!g->entered)
		pthread_cond_wait(&g->c, &g->m);
	pthread_mutex_unlock(&g->m);
}

static void gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->m);
	g->open = true;
	pthread_cond_broadcast(&g->c);
	pthread_mutex_unlock(&g->m);
}

static void gate_fini(struct gate *g)
{
	pthread_mutex_destroy(&g->m);
	pthread_cond_destroy(&g->c);
}

/* S2: reads of present bytes return at once while the producer is stuck
 * (here: inside stream_append, running a done() that blocks). */
static void test_present_while_stalled(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	CHECK_EQ(pat_append(s, 0, 1000), 0);
	READ_EQ(s, 0, 1000, false, 1000); /* no producer activity at all */

	struct gate g;
	gate_init(&g, s, STREAM_WAIT_RANGE, 1000, 10);
	CHECK_EQ(stream_wait(s, &g.w), STREAM_PARKED);
	struct job j = {.s = s, .off = 1000, .len = 100};
	pthread_t t = spawn(append_job, &j);
	gate_wait_entered(&g); /* the producer is now inside stream_append */

	READ_EQ(s, 0, 1100, false, 1100);
	READ_EQ(s, 500, 100, false, 100);
	READ_EQ(s, 1050, 100, true, 50);
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.frontier, 1100);
	CHECK_EQ(i.state, STREAM_RUNNING);
	CHECK_EQ(stream_set_attr(s, "k", "%d", 1), 0);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 2000, 1);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK(stream_unwait(s, &r.w));
	CHECK_EQ(g.seen.frontier, 1100);

	gate_open(&g);
	pthread_join(t, NULL);
	CHECK_EQ(j.result, 0);
	CHECK_EQ(atomic_load(&g.calls), 1);
	CHECK_EQ(atomic_load(&g.result), 10);
	CHECK_EQ(atomic_load(&r.calls), 0);
	stream_end(s);
	finish(s, &f);
	gate_fini(&g);
	rec_fini(&r);
}

/* A RANGE read that spans the frontier waits for all of it. */
static void test_range_spanning_frontier(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 50, 100);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 100, 40), 0);
	CHECK_EQ(pat_append(s, 140, 9), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	CHECK_EQ(pat_append(s, 149, 2), 0);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 100);

	/* The same through blocking stream_read in another thread. */
	struct job j = {.s = s, .off = 140, .len = 1000};
	pthread_t t = spawn(read_job, &j);
	for (uint64_t off = 151; off < 1140; off += 10)
		CHECK_EQ(pat_append(s, off, 10), 0);
	pthread_join(t, NULL);
	CHECK_EQ(j.result, 1000);
	stream_end(s);
	finish(s, &f);
	rec_fini(&r);
}

/* ANY (partial) reads return as soon as one byte is there. */
static void test_any(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct rec r;
	rec_init(&r, STREAM_WAIT_ANY, 100, 50);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	CHECK_EQ(pat_append(s, 100, 1), 0);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 1);

	CHECK_EQ(pat_append(s, 101, 29), 0);
	rec_reset(&r, STREAM_WAIT_ANY, 100, 50);
	CHECK_EQ(stream_wait(s, &r.w), 30);
	rec_reset(&r, STREAM_WAIT_ANY, 0, 50);
	CHECK_EQ(stream_wait(s, &r.w), 50);
	READ_EQ(s, 120, 100, true, 10);

	struct job j = {.s = s, .off = 130, .len = 4096, .partial = true};
	pthread_t t = spawn(read_job, &j);
	CHECK_EQ(pat_append(s, 130, 7), 0);
	pthread_join(t, NULL);
	CHECK(j.result >= 1 && j.result <= 7);
	stream_end(s);
	CHECK_EQ(atomic_load(&r.calls), 0);
	finish(s, &f);
	rec_fini(&r);
}

static void test_end_waiter(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct rec r;
	rec_init(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	CHECK_EQ(stream_set_length(s, 100), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	stream_end(s);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 0);
	finish(s, &f);

	s = started(&f, NULL);
	rec_reset(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_fail(s, ENETRESET, "reset");
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -EIO);
	rec_reset(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), -EIO);
	finish(s, &f);

	s = started(&f, NULL);
	rec_reset(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_cancel(s, "stop");
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -ECANCELED);
	rec_reset(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), -ECANCELED);
	CHECK_EQ(atomic_load(&r.calls), 0);
	finish(s, &f);
	rec_fini(&r);
}

/* SIZE: a size worth showing (announced length, a byte at 0, the end). */
static void test_size_waiter(void)
{
	struct fake_src f;
	struct rec r;
	struct stream_info i;
	rec_init(&r, STREAM_WAIT_SIZE, 0, 0);

	struct stream *s = started(&f, NULL); /* woken by set_length */
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(stream_set_length(s, 500), 0);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 0);
	info(s, &i);
	CHECK_EQ(i.length, 500);
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), 0);
	stream_cancel(s, NULL);
	finish(s, &f);

	s = started(&f, NULL); /* woken by the first byte, not by one ahead */
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(pat_write(s, 10, 10), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	CHECK_EQ(pat_append(s, 0, 1), 0);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 0);
	stream_cancel(s, NULL);
	finish(s, &f);

	s = started(&f, NULL); /* -EIO: failed with no byte at 0 */
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_fail(s, EIO, "nothing");
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -EIO);
	finish(s, &f);

	s = started(&f, NULL); /* -ECANCELED */
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_cancel(s, NULL);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -ECANCELED);
	finish(s, &f);

	s = started(&f, NULL); /* an empty stream's end is a size: 0 */
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_end(s);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 0);
	finish(s, &f);

	s = started(&f, NULL); /* failed after some bytes: there is a size */
	CHECK_EQ(pat_append(s, 0, 10), 0);
	stream_fail(s, EIO, "later");
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), 0);
	finish(s, &f);

	/* Parked on an idle stream (a parked waiter does not start it). */
	fake_init(&f);
	s = fake_stream(&f, NULL, "idle");
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_IDLE);
	CHECK_EQ(atomic_load(&f.starts), 0);
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	CHECK_EQ(pat_append(s, 0, 3), 0);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 0);
	stream_end(s);
	finish(s, &f);
	rec_fini(&r);
}

/* S4: failure at E (not a multiple of any chunk), exact to the byte, and
 * visible at once, even inside the done() of a reader being woken. */
static void test_delayed_error(void)
{
	const uint64_t E = 12345;
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	for (uint64_t off = 0; off < E; off += 4096)
		CHECK_EQ(pat_append(s, off, off + 4096 <= E ? 4096 : (size_t)(E - off)), 0);

	struct rec far, straddle, at, end;
	rec_init(&far, STREAM_WAIT_RANGE, 20000, 10);
	rec_init(&straddle, STREAM_WAIT_RANGE, E - 10, 100);
	rec_init(&at, STREAM_WAIT_ANY, E, 10);
	rec_init(&end, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &far.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &straddle.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &at.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &end.w), STREAM_PARKED);
	struct gate g;
	gate_init(&g, s, STREAM_WAIT_RANGE, 30000, 1);
	CHECK_EQ(stream_wait(s, &g.w), STREAM_PARKED);
	struct job reader = {.s = s, .off = 50000, .len = 10};
	pthread_t rt = spawn(read_job, &reader);

	struct job j = {.s = s, .err = EIO, .msg = "boom at 12345"};
	pthread_t ft = spawn(fail_job, &j);
	gate_wait_entered(&g); /* stream_fail is still running */
	CHECK_EQ(g.seen.state, STREAM_FAILED);
	CHECK_EQ(g.seen.error_offset, E);
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error_offset, E);
	CHECK_EQ(i.error, EIO);
	CHECK(strcmp(i.error_msg, "boom at 12345") == 0);
	CHECK(i.end_ms != 0);
	gate_open(&g);
	pthread_join(ft, NULL);
	pthread_join(rt, NULL);
	CHECK_EQ(reader.result, -EIO);
	CHECK_EQ(atomic_load(&g.result), -EIO);

	CHECK_EQ(atomic_load(&far.calls), 1);
	CHECK_EQ(atomic_load(&far.result), -EIO);
	CHECK_EQ(atomic_load(&straddle.calls), 1);
	CHECK_EQ(atomic_load(&straddle.result), 10);
	CHECK_EQ(atomic_load(&at.calls), 1);
	CHECK_EQ(atomic_load(&at.result), -EIO);
	CHECK_EQ(atomic_load(&end.calls), 1);
	CHECK_EQ(atomic_load(&end.result), -EIO);

	READ_EQ(s, 0, E, false, E);
	READ_EQ(s, 0, E + 1, false, E);
	READ_EQ(s, E - 10, 100, false, 10);
	READ_EQ(s, E - 1, 100, true, 1);
	READ_EQ(s, E - 1, 1, false, 1);
	READ_EQ(s, E, 1, false, -EIO);
	READ_EQ(s, E, 1, true, -EIO);
	READ_EQ(s, E + 100, 10, false, -EIO);

	/* Terminal: later calls change nothing. */
	stream_fail(s, EPIPE, "second");
	stream_end(s);
	CHECK_EQ(pat_append(s, E, 10), -ECANCELED);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, EIO);
	CHECK_EQ(i.error_offset, E);
	CHECK(strcmp(i.error_msg, "boom at 12345") == 0);
	CHECK_EQ(i.waiters, 0);
	finish(s, &f);
	gate_fini(&g);
	rec_fini(&far);
	rec_fini(&straddle);
	rec_fini(&at);
	rec_fini(&end);
}

/* S5: an announced length, then a short end: FAILED at the cut. */
static void test_truncated(void)
{
	struct fake_src f;
	struct stream_info i;
	struct stream *s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 1000), 0);
	info(s, &i);
	CHECK_EQ(i.length, 1000);
	CHECK_EQ(pat_append(s, 0, 600), 0);
	READ_EQ(s, 1000, 10, false, 0); /* at/past a known length: 0 at once */
	READ_EQ(s, 5000, 10, true, 0);
	struct rec a, b, c;
	rec_init(&a, STREAM_WAIT_RANGE, 550, 100);
	rec_init(&b, STREAM_WAIT_RANGE, 700, 10);
	rec_init(&c, STREAM_WAIT_RANGE, 990, 100);
	CHECK_EQ(stream_wait(s, &a.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &b.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &c.w), STREAM_PARKED);
	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error_offset, 600);
	CHECK_EQ(i.error, EIO);
	CHECK(strstr(i.error_msg, "truncated") != NULL);
	CHECK_EQ(i.length, 1000);
	CHECK_EQ(atomic_load(&a.result), 50);
	CHECK_EQ(atomic_load(&b.result), -EIO);
	CHECK_EQ(atomic_load(&c.result), -EIO);
	READ_EQ(s, 500, 200, false, 100);
	READ_EQ(s, 600, 1, false, -EIO);
	finish(s, &f);

	/* A read spanning a known length completes at it. */
	s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 1000), 0);
	rec_reset(&c, STREAM_WAIT_RANGE, 990, 100);
	CHECK_EQ(stream_wait(s, &c.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 0, 999), 0);
	CHECK_EQ(atomic_load(&c.calls), 0);
	CHECK_EQ(pat_append(s, 999, 1), 0);
	CHECK_EQ(atomic_load(&c.calls), 1);
	CHECK_EQ(atomic_load(&c.result), 10);
	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, 1000);
	finish(s, &f);

	/* Length rules: not below the bytes present, not changed once set. */
	s = started(&f, NULL);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	CHECK_EQ(pat_write(s, 200, 10), 0);
	CHECK_EQ(stream_set_length(s, 50), -EINVAL);
	CHECK_EQ(stream_set_length(s, 209), -EINVAL);
	CHECK_EQ(stream_set_length(s, 210), 0);
	CHECK_EQ(stream_set_length(s, 300), -EINVAL);
	CHECK_EQ(stream_set_length(s, 210), 0);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_RUNNING);
	CHECK_EQ(i.length, 210);
	stream_cancel(s, NULL);
	finish(s, &f);
	rec_fini(&a);
	rec_fini(&b);
	rec_fini(&c);
}

/* Bytes past an announced length: -EFBIG, FAILED at the length. */
static void test_too_long(void)
{
	struct fake_src f;
	struct stream_info i;
	struct stream *s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 100), 0);
	CHECK_EQ(pat_append(s, 0, 60), 0);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 90, 20);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(pat_append(s, 60, 60), -EFBIG);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, EFBIG);
	CHECK_EQ(i.error_offset, 100);
	CHECK_EQ(i.bytes, 100);
	CHECK(i.error_msg[0] != '\0');
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), 10);
	READ_EQ(s, 0, 100, false, 100);
	READ_EQ(s, 100, 1, false, -EIO);
	CHECK_EQ(pat_append(s, 100, 1), -ECANCELED);
	finish(s, &f);

	/* Ending exactly at the length is fine. */
	s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 100), 0);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	finish(s, &f);

	/* Through fill_fd, one byte too many. */
	s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 100), 0);
	int p[2];
	CHECK_EQ(pipe(p), 0);
	unsigned char buf[101];
	pat_fill(buf, 0, sizeof(buf));
	CHECK_EQ(write(p[1], buf, sizeof(buf)), (ssize_t)sizeof(buf));
	CHECK_EQ(stream_fill_fd(s, p[0], sizeof(buf)), -EFBIG);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error_offset, 100);
	READ_EQ(s, 0, 200, false, 100);
	close(p[0]);
	close(p[1]);
	finish(s, &f);

	/* A write ahead past the length fails at the frontier. */
	s = started(&f, NULL);
	CHECK_EQ(stream_set_length(s, 100), 0);
	CHECK_EQ(pat_append(s, 0, 10), 0);
	CHECK_EQ(pat_write(s, 150, 10), -EFBIG);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, EFBIG);
	CHECK_EQ(i.error_offset, 10);
	finish(s, &f);
	rec_fini(&r);
}

/* S6: the end makes the size exact. */
static void test_end_exact(void)
{
	struct fake_src f;
	struct stream_info i;
	struct stream *s = started(&f, NULL);
	CHECK_EQ(pat_append(s, 0, 1000), 0);
	struct rec a, b;
	rec_init(&a, STREAM_WAIT_RANGE, 900, 200);
	rec_init(&b, STREAM_WAIT_ANY, 1500, 10);
	CHECK_EQ(stream_wait(s, &a.w), STREAM_PARKED);
	CHECK_EQ(stream_wait(s, &b.w), STREAM_PARKED);
	info(s, &i);
	CHECK_EQ(i.waiters, 2);
	stream_end(s);
	CHECK_EQ(atomic_load(&a.calls), 1);
	CHECK_EQ(atomic_load(&a.result), 100);
	CHECK_EQ(atomic_load(&b.calls), 1);
	CHECK_EQ(atomic_load(&b.result), 0);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, 1000);
	CHECK_EQ(i.waiters, 0);
	READ_EQ(s, 1000, 1, false, 0);
	READ_EQ(s, 999, 1, false, 1);
	READ_EQ(s, 2000, 10, true, 0);
	CHECK_EQ(pat_append(s, 1000, 1), -ECANCELED);
	finish(s, &f);

	/* Bytes written ahead of a hole, then the end at the frontier: the
	 * stream cannot be complete at 100 when byte 1000 was delivered.
	 * Either way a read past an exact end must return 0, and the
	 * frontier is where the fill stopped. */
	s = started(&f, NULL);
	CHECK_EQ(pat_write(s, 1000, 10), 0);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error_offset, 100);
	CHECK(strstr(i.error_msg, "truncated") != NULL);
	READ_EQ(s, 100, 1, false, -EIO);
	READ_EQ(s, 1000, 10, false, 10); /* delivered bytes stay readable */
	finish(s, &f);
	rec_fini(&a);
	rec_fini(&b);
}

/*
 * The store's largest file (EFBIG; here RLIMIT_FSIZE, which the kernel
 * applies like a file system's limit, e.g. ext4's 16 TiB). A write out of
 * order past it loses only those bytes: their readers get -EFBIG, the
 * stream goes on. The sequential fill reaching it fails the stream there,
 * to the byte.
 */
static void store_limit(const char *dir)
{
	const uint64_t lim = (1 << 20) + 5;
	struct fake_src f;
	struct stream_info i;
	struct stream *s = started(&f, dir);
	CHECK_EQ(pat_append(s, 0, 1000), 0);
	struct rec far;
	rec_init(&far, STREAM_WAIT_RANGE, 3 << 20, 10);
	CHECK_EQ(stream_wait(s, &far.w), STREAM_PARKED);
	CHECK_EQ(pat_write(s, 2 << 20, 4096), -EFBIG); /* far past: limit <= 2 MiB */
	CHECK_EQ(atomic_load(&far.calls), 1);
	CHECK_EQ(atomic_load(&far.result), -EFBIG);
	CHECK_EQ(pat_write(s, lim - 100, 4096), -EFBIG); /* across: the limit, exactly */
	info(s, &i);
	CHECK_EQ(i.state, STREAM_RUNNING);
	CHECK_EQ(i.bytes, 1100);
	READ_EQ(s, lim - 100, 4096, false, 100);
	READ_EQ(s, lim, 1, false, -EFBIG);
	READ_EQ(s, lim + 10, 1, true, -EFBIG);
	CHECK_EQ(pat_write(s, lim + 10, 10), -EFBIG); /* known: not even tried */
	CHECK_EQ(pat_append(s, 1000, 2000), 0);       /* below it all goes on */
	READ_EQ(s, 0, 3000, false, 3000);
	rec_fini(&far);
	finish(s, &f);

	/* The sequential fill stops at the limit, to the byte. */
	s = started(&f, dir);
	int r = 0;
	uint64_t off = 0;
	while (r == 0 && off < 2 * lim) {
		r = pat_append(s, off, 3 * 4096 + 1);
		off += 3 * 4096 + 1;
	}
	CHECK_EQ(r, -EFBIG);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, EFBIG);
	CHECK_EQ(i.error_offset, lim);
	READ_EQ(s, lim - 10, 100, false, 10);
	READ_EQ(s, lim, 1, false, -EIO);
	finish(s, &f);
}

static void test_store_limit(void)
{
	struct rlimit old, rl;
	CHECK_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
	rl = old;
	rl.rlim_cur = (1 << 20) + 5; /* store_limit()'s lim */
	void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
	CHECK_EQ(setrlimit(RLIMIT_FSIZE, &rl), 0);
	store_limit(NULL);
	char *dir = t_tmpdir("limit");
	store_limit(dir);
	CHECK_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, was);
	rmdir(dir);
	free(dir);
}
/* "Bytes already present are not rewritten": what a reader saw stays. */
static void test_no_rewrite(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	unsigned char a[10], b[30], out[30];
	memset(a, 'A', sizeof(a));
	memset(b, 'B', sizeof(b));
	CHECK_EQ(stream_write(s, 10, a, sizeof(a)), 0);
	CHECK_EQ(stream_write(s, 0, b, sizeof(b)), 0);
	CHECK_EQ(stream_read(s, out, 30, 0, false), 30);
	CHECK(memcmp(out, b, 10) == 0);
	CHECK(memcmp(out + 10, a, 10) == 0);
	CHECK(memcmp(out + 20, b, 10) == 0);

	/* An append over bytes written ahead keeps them too. */
	CHECK_EQ(stream_append(s, b, 30), 0); /* seq_pos was 0: all present */
	CHECK_EQ(stream_append(s, b, 30), 0); /* [30, 60) */
	CHECK_EQ(stream_read(s, out, 30, 0, false), 30);
	CHECK(memcmp(out + 10, a, 10) == 0);
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.frontier, 60);
	CHECK_EQ(i.bytes, 60);
	stream_end(s);
	info(s, &i);
	CHECK_EQ(i.length, 60);
	finish(s, &f);
}

/* A reply of the present bytes [off, off+len): noted as sent, or, if
 * @cached (kept in the page cache), un-noted. */
static void reply(struct stream *s, uint64_t off, size_t len, bool cached)
{
	char buf[256];
	CHECK(len <= sizeof(buf));
	CHECK_EQ(stream_copy_reply(s, buf, len, off, cached), 0);
}

/* A stream with its first 200 bytes present. */
static struct stream *with_200(struct fake_src *f)
{
	struct stream *s = started(f, NULL);
	unsigned char b[200];
	memset(b, 'x', sizeof(b));
	CHECK_EQ(stream_write(s, 0, b, sizeof(b)), 0);
	return s;
}

/* Sent ranges come back lowest first, only below the limit asked for; a
 * range crossing it is split there and its rest stays noted. */
static void test_take_sent(void)
{
	struct fake_src f;
	struct stream *s = with_200(&f);
	uint64_t off = 0, len = 0;
	CHECK(!stream_take_sent(s, UINT64_MAX, &off, &len));
	reply(s, 100, 50, false);
	reply(s, 10, 20, false);
	reply(s, 30, 5, false); /* joins [10, 30) */
	CHECK(!stream_take_sent(s, 10, &off, &len));
	CHECK(stream_take_sent(s, 20, &off, &len));
	CHECK_EQ(off, 10);
	CHECK_EQ(len, 10);
	CHECK(stream_take_sent(s, 120, &off, &len));
	CHECK_EQ(off, 20);
	CHECK_EQ(len, 15);
	CHECK(stream_take_sent(s, 120, &off, &len));
	CHECK_EQ(off, 100);
	CHECK_EQ(len, 20);
	CHECK(!stream_take_sent(s, 120, &off, &len));
	CHECK(stream_take_sent(s, UINT64_MAX, &off, &len));
	CHECK_EQ(off, 120);
	CHECK_EQ(len, 30);
	CHECK(!stream_take_sent(s, UINT64_MAX, &off, &len));
	finish(s, &f);
}

/* Highest first, in pieces that start at multiples of the chunk (or at
 * a range's start), so that a walk down stores aligned pieces. */
static void test_take_sent_last(void)
{
	struct fake_src f;
	struct stream *s = with_200(&f);
	uint64_t off = 0, len = 0;
	CHECK(!stream_take_sent_last(s, 16, &off, &len));
	reply(s, 100, 50, false);
	reply(s, 10, 25, false);
	CHECK(!stream_take_sent_last(s, 0, &off, &len));
	static const uint64_t want[][2] = {{144, 6}, {128, 16}, {112, 16}, {100, 12},
	                                   {32, 3},  {16, 16},  {10, 6}};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		CHECK(stream_take_sent_last(s, 16, &off, &len));
		CHECK_EQ(off, want[i][0]);
		CHECK_EQ(len, want[i][1]);
	}
	CHECK(!stream_take_sent_last(s, 16, &off, &len));
	finish(s, &f);
}

/* Bytes a cached reply sent (the kernel keeps them in the page cache)
 * leave the set; what is around them stays. A copy of bytes not present
 * notes nothing. */
static void test_unnote_sent(void)
{
	struct fake_src f;
	struct stream *s = with_200(&f);
	uint64_t off = 0, len = 0;
	char buf[16];
	reply(s, 0, 10, true); /* nothing noted: nothing happens */
	CHECK(!stream_take_sent(s, UINT64_MAX, &off, &len));
	CHECK_EQ(stream_copy_reply(s, buf, 16, 195, false), -ERANGE);
	CHECK(!stream_take_sent(s, UINT64_MAX, &off, &len));
	reply(s, 0, 100, false);
	reply(s, 20, 10, true);
	reply(s, 90, 50, true); /* past the end of the set */
	CHECK(stream_take_sent(s, UINT64_MAX, &off, &len));
	CHECK_EQ(off, 0);
	CHECK_EQ(len, 20);
	CHECK(stream_take_sent(s, UINT64_MAX, &off, &len));
	CHECK_EQ(off, 30);
	CHECK_EQ(len, 60);
	CHECK(!stream_take_sent(s, UINT64_MAX, &off, &len));
	finish(s, &f);
}

int main(void)
{
	t_init();
	RUN(test_whole_read_ram);
	RUN(test_whole_read_disk);
	RUN(test_sparse_far_out);
	RUN(test_tiny);
	RUN(test_wait_woken);
	RUN(test_present_while_stalled);
	RUN(test_range_spanning_frontier);
	RUN(test_any);
	RUN(test_end_waiter);
	RUN(test_size_waiter);
	RUN(test_delayed_error);
	RUN(test_truncated);
	RUN(test_too_long);
	RUN(test_end_exact);
	RUN(test_store_limit);
	RUN(test_no_rewrite);
	RUN(test_take_sent);
	RUN(test_take_sent_last);
	RUN(test_unnote_sent);
	return t_finish("stream");
}
