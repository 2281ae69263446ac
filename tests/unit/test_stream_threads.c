/*
 * test_stream_threads.c - unit tests for stream.c under threads: cancel of
 * a busy producer and of every kind of waiter (S9), unwait racing the
 * append that completes the wait, start and cancel crossing, attributes,
 * references dropped from many threads, and many readers on one producer.
 *
 * As in test_stream.c, the test plays the source and forces interleavings
 * with condition variables, barriers and joins, never with sleeps.
 */
#include "stream_test.h"
#include "streamfs/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- cancel ----------------------------------------------------------- */

struct prod {
	struct stream *s; /* the producer's own reference */
	int result;
	uint64_t produced;
};

/* A producer writing as fast as it can, appends and fill_fd calls mixed, until
 * the stream refuses. */
static void *busy_producer(void *arg)
{
	struct prod *p = arg;
	unsigned char buf[4096];
	int pp[2];
	if (pipe(pp) != 0)
		abort();
	int r = 0;
	uint64_t off = 0;
	for (unsigned n = 0; r == 0; n++) {
		pat_fill(buf, off, sizeof(buf));
		if (n % 2) {
			r = stream_append(p->s, buf, sizeof(buf));
			if (r == 0)
				off += sizeof(buf);
			continue;
		}
		if (write(pp[1], buf, sizeof(buf)) != (ssize_t)sizeof(buf))
			abort();
		size_t moved = 0;
		while (moved < sizeof(buf) && r == 0) {
			ssize_t k = stream_fill_fd(p->s, pp[0], sizeof(buf) - moved);
			if (k > 0)
				moved += (size_t)k;
			else
				r = (int)k;
		}
		if (r == 0)
			off += sizeof(buf);
		else /* resynchronise: drop what the stream refused */
			break;
	}
	p->result = r;
	p->produced = off;
	close(pp[0]);
	close(pp[1]);
	stream_unref(p->s);
	return NULL;
}

static void test_cancel_busy_producer(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct prod p = {.s = stream_ref(s)};
	pthread_t t = spawn(busy_producer, &p);
	unsigned char one;
	CHECK_EQ(stream_read(s, &one, 1, 256 * 1024, false), 1); /* it is running */
	stream_cancel(s, "stop now");
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	CHECK_EQ(i.error, ECANCELED);
	CHECK(strcmp(i.error_msg, "stop now") == 0);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	/* Present bytes stay readable; beyond them, -ECANCELED. */
	READ_EQ(s, 0, 256 * 1024, false, 256 * 1024);
	READ_EQ(s, i.frontier, 1, false, -ECANCELED);
	READ_EQ(s, i.frontier + 100000, 1, true, -ECANCELED);

	stream_unref(s); /* the producer's reference keeps it alive */
	pthread_join(t, NULL);
	CHECK_EQ(p.result, -ECANCELED);
	CHECK(p.produced >= 256 * 1024);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	CHECK_EQ(atomic_load(&f.destroys), 1);
	fake_fini(&f);
}

static void *cancel_job(void *arg)
{
	struct job *j = arg;
	stream_cancel(j->s, j->msg);
	return NULL;
}

/* S9: cancel wakes every waiter, of every kind, exactly once. */
static void test_cancel_waiters(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	enum { NR = 8, NT = 4 };
	struct rec r[NR];
	static const enum stream_wait_kind kinds[NR] = {
	    STREAM_WAIT_RANGE, STREAM_WAIT_ANY, STREAM_WAIT_END,   STREAM_WAIT_SIZE,
	    STREAM_WAIT_RANGE, STREAM_WAIT_ANY, STREAM_WAIT_RANGE, STREAM_WAIT_SIZE,
	};
	for (int k = 0; k < NR; k++) {
		rec_init(&r[k], kinds[k], (uint64_t)k * 1000, 10);
		CHECK_EQ(stream_wait(s, &r[k].w), STREAM_PARKED);
	}
	struct job rj[NT];
	pthread_t rt[NT];
	for (int k = 0; k < NT; k++) {
		rj[k] = (struct job){.s = s, .off = (uint64_t)k * 77, .len = 100, .partial = k % 2};
		rt[k] = spawn(read_job, &rj[k]);
	}
	struct job cj = {.s = s, .msg = NULL};
	pthread_t ct = spawn(cancel_job, &cj);
	pthread_join(ct, NULL);
	for (int k = 0; k < NT; k++) {
		pthread_join(rt[k], NULL);
		CHECK_EQ(rj[k].result, -ECANCELED);
	}
	for (int k = 0; k < NR; k++) {
		CHECK_EQ(atomic_load(&r[k].calls), 1);
		CHECK_EQ(atomic_load(&r[k].result), -ECANCELED);
	}
	stream_cancel(s, "again");
	for (int k = 0; k < NR; k++) {
		CHECK_EQ(atomic_load(&r[k].calls), 1);
		CHECK(!stream_unwait(s, &r[k].w));
		rec_fini(&r[k]);
	}
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.waiters, 0);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	CHECK(strcmp(i.error_msg, "cancelled") == 0);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	finish(s, &f);
}

/* ---- unwait ----------------------------------------------------------- */

static void test_unwait(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct rec r;
	struct stream_info i;

	/* Before the wait: the wait then returns -EINTR, even if answerable. */
	rec_init(&r, STREAM_WAIT_RANGE, 0, 10);
	CHECK(!stream_unwait(s, &r.w));
	CHECK_EQ(stream_wait(s, &r.w), -EINTR);
	CHECK_EQ(pat_append(s, 0, 100), 0);
	CHECK_EQ(atomic_load(&r.calls), 0);
	rec_reset(&r, STREAM_WAIT_RANGE, 0, 10);
	CHECK(!stream_unwait(s, &r.w));
	CHECK_EQ(stream_wait(s, &r.w), -EINTR);
	info(s, &i);
	CHECK_EQ(i.waiters, 0);

	/* A parked waiter taken back: done() is never called. */
	rec_reset(&r, STREAM_WAIT_RANGE, 150, 10);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	info(s, &i);
	CHECK_EQ(i.waiters, 1);
	CHECK(stream_unwait(s, &r.w));
	info(s, &i);
	CHECK_EQ(i.waiters, 0);
	CHECK_EQ(pat_append(s, 100, 100), 0);
	stream_cancel(s, NULL);
	CHECK_EQ(atomic_load(&r.calls), 0);
	finish(s, &f);

	/* After done(): false. */
	s = started(&f, NULL);
	rec_reset(&r, STREAM_WAIT_END, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_end(s);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK(!stream_unwait(s, &r.w));
	CHECK_EQ(atomic_load(&r.calls), 1);
	finish(s, &f);
	rec_fini(&r);
}

struct race {
	struct stream *s;
	pthread_barrier_t bar;
	int iters;
	int errors;
};

static void *race_producer(void *arg)
{
	struct race *rc = arg;
	for (int k = 0; k < rc->iters; k++) {
		pthread_barrier_wait(&rc->bar);
		if (pat_append(rc->s, (uint64_t)k, 1) != 0)
			rc->errors++;
		pthread_barrier_wait(&rc->bar);
	}
	return NULL;
}

/* stream_unwait racing the completion: exactly one of them wins. */
static void test_unwait_race(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	struct race rc = {.s = s, .iters = 10000};
	pthread_barrier_init(&rc.bar, NULL, 2);
	pthread_t t = spawn(race_producer, &rc);
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 0, 1);
	int unwaited = 0, completed = 0, bad = 0;
	for (int k = 0; k < rc.iters; k++) {
		rec_reset(&r, k % 2 ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE, (uint64_t)k, 1);
		ssize_t w = stream_wait(s, &r.w);
		pthread_barrier_wait(&rc.bar);
		bool u = stream_unwait(s, &r.w);
		pthread_barrier_wait(&rc.bar); /* the append (and any done) is over */
		int calls = atomic_load(&r.calls);
		bool ok =
		    w == STREAM_PARKED && calls + (int)u == 1 && (u || atomic_load(&r.result) == 1);
		if (!ok && bad++ < 5)
			fprintf(stderr,
			        "unwait race iter %d: wait %zd unwait %d calls %d result %lld\n", k,
			        w, u, calls, (long long)atomic_load(&r.result));
		unwaited += u;
		completed += calls;
	}
	pthread_join(t, NULL);
	CHECK_EQ(bad, 0);
	CHECK_EQ(rc.errors, 0);
	CHECK_EQ(unwaited + completed, rc.iters);
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.waiters, 0);
	printf("stream: unwait race: %d taken back, %d completed\n", unwaited, completed);
	pthread_barrier_destroy(&rc.bar);
	stream_end(s);
	finish(s, &f);
	rec_fini(&r);
}

/* ---- source calls ----------------------------------------------------- */

static void *start_job(void *arg)
{
	struct job *j = arg;
	j->result = stream_start(j->s);
	return NULL;
}

static void test_start_cancel(void)
{
	struct fake_src f;
	struct stream_info i;

	/* start()/cancel() once each, however often asked. */
	struct stream *s = started(&f, NULL);
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(atomic_load(&f.starts), 1);
	stream_cancel(s, "bye");
	stream_cancel(s, "bye again");
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(atomic_load(&f.starts), 1);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	CHECK(strcmp(i.error_msg, "bye") == 0);
	finish(s, &f);

	/* Cancel arriving while start() runs: waiters are woken at once,
	 * the source's cancel() comes exactly once (after start() returned). */
	fake_init(&f);
	f.gate_start = true;
	s = fake_stream(&f, NULL, "gated");
	struct rec r;
	rec_init(&r, STREAM_WAIT_RANGE, 0, 10);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	struct job sj = {.s = s};
	pthread_t t = spawn(start_job, &sj);
	fake_wait_in_start(&f);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_RUNNING);
	stream_cancel(s, "during start");
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -ECANCELED);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	fake_open_start(&f);
	pthread_join(t, NULL);
	CHECK_EQ(sj.result, 0);
	CHECK_EQ(atomic_load(&f.starts), 1);
	CHECK_EQ(atomic_load(&f.cancels), 1);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	CHECK(strcmp(i.error_msg, "during start") == 0);
	finish(s, &f);

	/* start() fails: FAILED at 0 with its error. */
	fake_init(&f);
	f.start_result = -ENOENT;
	s = fake_stream(&f, NULL, "nostart");
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(stream_start(s), -ENOENT);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, ENOENT);
	CHECK_EQ(i.error_offset, 0);
	CHECK(strstr(i.error_msg, "start") != NULL);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -EIO);
	CHECK_EQ(stream_start(s), 0);
	stream_cancel(s, NULL);
	CHECK_EQ(atomic_load(&f.starts), 1);
	CHECK_EQ(atomic_load(&f.cancels), 0);
	finish(s, &f);

	/* Cancelled while idle: never started afterwards. */
	fake_init(&f);
	s = fake_stream(&f, NULL, "idle");
	rec_reset(&r, STREAM_WAIT_ANY, 0, 10);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	stream_cancel(s, NULL);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -ECANCELED);
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(atomic_load(&f.starts), 0);
	CHECK(atomic_load(&f.cancels) <= 1);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_CANCELLED);
	CHECK_EQ(i.start_ms, 0);
	finish(s, &f);

	/* The store is created at start; one that cannot be fails the stream
	 * at 0 with a message naming it, and the source never starts. */
	fake_init(&f);
	char *dir = t_tmpdir("stream");
	struct store *st = store_new(dir, "gone");
	CHECK_EQ(rmdir(dir), 0);
	s = stream_new("nostore", st, &fake_ops, &f);
	f.s = s;
	rec_reset(&r, STREAM_WAIT_SIZE, 0, 0);
	CHECK_EQ(stream_wait(s, &r.w), STREAM_PARKED);
	CHECK_EQ(stream_start(s), -ENOENT);
	info(s, &i);
	CHECK_EQ(i.state, STREAM_FAILED);
	CHECK_EQ(i.error, ENOENT);
	CHECK_EQ(i.error_offset, 0);
	CHECK(strstr(i.error_msg, "cannot create the store in") != NULL);
	CHECK(strstr(i.error_msg, dir) != NULL);
	CHECK_EQ(atomic_load(&r.calls), 1);
	CHECK_EQ(atomic_load(&r.result), -EIO);
	stream_cancel(s, NULL);
	CHECK_EQ(atomic_load(&f.starts), 0);
	CHECK_EQ(atomic_load(&f.cancels), 0);
	finish(s, &f);
	free(dir);
	rec_fini(&r);
}

/* ---- attributes and references ---------------------------------------- */

static void count_key(const char *key, void *arg)
{
	unsigned *mask = arg;
	if (strcmp(key, "exit_status") == 0)
		*mask |= 1;
	else if (strcmp(key, "http_code") == 0)
		*mask |= 2;
	else
		*mask |= 4;
}

static void test_attrs(void)
{
	struct fake_src f;
	fake_init(&f);
	struct stream *s = fake_stream(&f, NULL, "attrs");
	char buf[16];
	CHECK_EQ(stream_get_attr(s, "exit_status", buf, sizeof(buf)), -ENODATA);
	CHECK_EQ(stream_list_attrs(s, count_key, &(unsigned){0}), 0);
	CHECK_EQ(stream_set_attr(s, "exit_status", "%d", 0), 0);
	CHECK_EQ(stream_get_attr(s, "exit_status", buf, sizeof(buf)), 1);
	CHECK(strcmp(buf, "0") == 0);
	CHECK_EQ(stream_set_attr(s, "exit_status", "%d", 127), 0);
	CHECK_EQ(stream_get_attr(s, "exit_status", buf, sizeof(buf)), 3);
	CHECK(strcmp(buf, "127") == 0);
	CHECK_EQ(stream_get_attr(s, "exit_status", buf, 2), 3); /* truncated copy */
	CHECK(strcmp(buf, "1") == 0);
	CHECK_EQ(stream_get_attr(s, "exit_status", NULL, 0), 3); /* length only */
	CHECK_EQ(stream_set_attr(s, "http_code", "%s", "206"), 0);
	CHECK_EQ(stream_set_attr(s, "empty", "%s", ""), 0);
	CHECK_EQ(stream_get_attr(s, "empty", buf, sizeof(buf)), 0);
	CHECK(buf[0] == '\0');
	unsigned mask = 0;
	CHECK_EQ(stream_list_attrs(s, count_key, &mask), 3);
	CHECK_EQ(mask, 7);
	CHECK_EQ(stream_get_attr(s, "exit", buf, sizeof(buf)), -ENODATA);
	finish(s, &f);
}

struct refjob {
	struct stream *s;
	atomic_int *destroys;
	int bad;
};

static void *ref_churn(void *arg)
{
	struct refjob *j = arg;
	for (int k = 0; k < 2000; k++) {
		struct stream *r = stream_ref(j->s);
		if (r != j->s || atomic_load(j->destroys) != 0)
			j->bad++;
		stream_unref(r);
	}
	return NULL;
}

static void test_refcount(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	CHECK(stream_ref(s) == s);
	stream_ref(s);
	stream_unref(s);
	stream_unref(s);
	CHECK_EQ(atomic_load(&f.destroys), 0);

	enum { NT = 8 };
	struct refjob j[NT];
	pthread_t t[NT];
	for (int k = 0; k < NT; k++) {
		j[k] = (struct refjob){.s = s, .destroys = &f.destroys};
		t[k] = spawn(ref_churn, &j[k]);
	}
	for (int k = 0; k < NT; k++) {
		pthread_join(t[k], NULL);
		CHECK_EQ(j[k].bad, 0);
	}
	CHECK_EQ(atomic_load(&f.destroys), 0);
	stream_end(s);
	stream_unref(NULL);
	finish(s, &f); /* checks destroys == 1 */
}

/* ---- many readers ----------------------------------------------------- */

#define MR_TOTAL (4u * 1024 * 1024)

struct mreader {
	struct stream *s;
	uint64_t seed;
	int reads, bad;
};

static void *many_reader(void *arg)
{
	struct mreader *m = arg;
	uint64_t st = m->seed;
	unsigned char *buf = malloc(65536);
	for (int k = 0; k < m->reads; k++) {
		uint64_t off = xs(&st) % (MR_TOTAL + 4096);
		size_t len = 1 + (size_t)(xs(&st) % 65536);
		bool partial = xs(&st) % 3 == 0;
		ssize_t r = stream_read(m->s, buf, len, off, partial);
		uint64_t left = off >= MR_TOTAL ? 0 : MR_TOTAL - off;
		size_t want = len < left ? len : (size_t)left;
		bool ok = partial ? (want == 0 ? r == 0 : r >= 1 && (size_t)r <= want)
		                  : r == (ssize_t)want;
		if (ok && r > 0)
			ok = pat_ok(buf, off, (size_t)r);
		if (!ok && m->bad++ < 3)
			fprintf(
			    stderr,
			    "many readers: read(off %llu, len %zu, partial %d) = %zd, want %zu\n",
			    (unsigned long long)off, len, partial, r, want);
	}
	free(buf);
	return NULL;
}

static void *chunk_producer(void *arg)
{
	struct prod *p = arg;
	uint64_t st = 12345, off = 0;
	unsigned char *buf = malloc(70000);
	int r = 0;
	while (off < MR_TOTAL && r == 0) {
		size_t n = 1 + (size_t)(xs(&st) % 70000);
		if (n > MR_TOTAL - off)
			n = (size_t)(MR_TOTAL - off);
		pat_fill(buf, off, n);
		r = stream_append(p->s, buf, n);
		off += n;
	}
	stream_end(p->s);
	p->result = r;
	p->produced = off;
	free(buf);
	stream_unref(p->s);
	return NULL;
}

static void test_many_readers(void)
{
	struct fake_src f;
	struct stream *s = started(&f, NULL);
	enum { NR = 32 };
	struct mreader m[NR];
	pthread_t t[NR];
	for (int k = 0; k < NR; k++) {
		m[k] = (struct mreader){.s = s, .seed = 1000 + (uint64_t)k, .reads = 150};
		t[k] = spawn(many_reader, &m[k]);
	}
	struct prod p = {.s = stream_ref(s)};
	pthread_t pt = spawn(chunk_producer, &p);
	pthread_join(pt, NULL);
	CHECK_EQ(p.result, 0);
	for (int k = 0; k < NR; k++) {
		pthread_join(t[k], NULL);
		CHECK_EQ(m[k].bad, 0);
	}
	struct stream_info i;
	info(s, &i);
	CHECK_EQ(i.state, STREAM_COMPLETE);
	CHECK_EQ(i.length, MR_TOTAL);
	CHECK_EQ(i.waiters, 0);
	finish(s, &f);
}

int main(void)
{
	t_init();
	RUN(test_cancel_busy_producer);
	RUN(test_cancel_waiters);
	RUN(test_unwait);
	RUN(test_unwait_race);
	RUN(test_start_cancel);
	RUN(test_attrs);
	RUN(test_refcount);
	RUN(test_many_readers);
	return t_finish("stream_threads");
}
