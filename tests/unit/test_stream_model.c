/*
 * test_stream_model.c - stream.c against a model: a seeded random sequence
 * of operations (start, append, fill_fd, write, wait, unwait, set_length,
 * read, end, fail, cancel) on a small stream, every result, every done() and
 * every stream_get_info() checked against a byte map and a state.
 *
 * A failing seed is printed; STREAMFS_TEST_SEED=N runs just that one.
 */
#include "stream_test.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- randomized interleavings against a model ------------------------- */

#define MM 4096   /* model size; nothing is ever present at or past WLIM */
#define WLIM 2600 /* writes and lengths stay below this */
#define NSLOT 10

struct model {
	enum stream_state st;
	bool present[MM];
	int64_t length;
	uint64_t seq, err_off;
	int err;
};

static uint64_t m_run(const struct model *m, uint64_t off)
{
	while (off < MM && m->present[off])
		off++;
	return off;
}

static uint64_t m_top(const struct model *m)
{
	for (uint64_t k = MM; k > 0; k--)
		if (m->present[k - 1])
			return k;
	return 0;
}

static uint64_t m_total(const struct model *m)
{
	uint64_t n = 0;
	for (uint64_t k = 0; k < MM; k++)
		n += m->present[k];
	return n;
}

static bool m_terminal(const struct model *m)
{
	return m->st == STREAM_COMPLETE || m->st == STREAM_FAILED || m->st == STREAM_CANCELLED;
}

/* The contract's answer for a waiter, or STREAM_PARKED. */
static ssize_t m_eval(const struct model *m, enum stream_wait_kind kind, uint64_t off, size_t len)
{
	ssize_t stop = m->st == STREAM_CANCELLED ? -ECANCELED : -EIO;
	uint64_t frontier = m_run(m, 0);
	if (kind == STREAM_WAIT_END)
		return !m_terminal(m) ? STREAM_PARKED : m->st == STREAM_COMPLETE ? 0 : stop;
	if (kind == STREAM_WAIT_SIZE) {
		if (frontier > 0 || m->st == STREAM_COMPLETE)
			return 0;
		if (m_terminal(m))
			return stop;
		return m->length >= 0 ? 0 : STREAM_PARKED;
	}
	if (len == 0)
		return 0;
	uint64_t run = m_run(m, off), avail = run - off;
	uint64_t want = kind == STREAM_WAIT_ANY ? 1 : len;
	if (m->st == STREAM_COMPLETE) /* exactly [0, length) is present */
		return off >= (uint64_t)m->length ? 0 : (ssize_t)(avail < len ? avail : len);
	if (avail >= want)
		return (ssize_t)(avail < len ? avail : len);
	if (m_terminal(m)) /* failed or cancelled: short up to E, the error at or past it */
		return off < m->err_off && avail > 0 ? (ssize_t)avail : stop;
	if (m->length >= 0) {
		if (off >= (uint64_t)m->length)
			return 0;
		if (run >= (uint64_t)m->length)
			return (ssize_t)((uint64_t)m->length - off);
	}
	return STREAM_PARKED;
}

static void m_stop(struct model *m, enum stream_state st, int err)
{
	m->st = st;
	m->err = err;
	m->err_off = m_run(m, 0);
}

/* Bytes [off, off+n) reached the store: the expected producer result. */
static int m_mark(struct model *m, uint64_t off, uint64_t n, bool seq)
{
	if (m->st != STREAM_RUNNING)
		return -ECANCELED;
	uint64_t end = off + n;
	bool too_long = false;
	if (m->length >= 0 && end > (uint64_t)m->length) {
		end = off < (uint64_t)m->length ? (uint64_t)m->length : off;
		too_long = true;
	}
	if (seq)
		m->seq = end;
	for (uint64_t k = off; k < end; k++)
		m->present[k] = true;
	if (too_long) {
		m_stop(m, STREAM_FAILED, EFBIG);
		return -EFBIG;
	}
	return 0;
}

static void m_end(struct model *m)
{
	if (m_terminal(m))
		return;
	uint64_t frontier = m_run(m, 0), need = m_top(m);
	if (m->length >= 0 && (uint64_t)m->length > need)
		need = (uint64_t)m->length;
	if (frontier < need) {
		m_stop(m, STREAM_FAILED, EIO);
		return;
	}
	m->st = STREAM_COMPLETE;
	m->length = (int64_t)frontier;
}

static int m_set_length(struct model *m, uint64_t len)
{
	if (m_terminal(m))
		return m->st == STREAM_COMPLETE && (uint64_t)m->length != len ? -EINVAL : 0;
	if (len < m_top(m) || (m->length >= 0 && (uint64_t)m->length != len))
		return -EINVAL;
	m->length = (int64_t)len;
	return 0;
}

struct slot {
	struct rec r;
	bool parked;   /* per the model: waiting, done() not yet due */
	int exp_calls; /* done() calls expected so far */
	ssize_t exp_result;
};

struct mrun {
	uint64_t seed, rng;
	int op;
	const char *opname;
	bool bad;
	struct model m;
	struct slot sl[NSLOT];
	struct stream *s;
	int pipe_r, pipe_w;
};

#define MCHECK(mr, cond, ...)                                                                      \
	do {                                                                                       \
		if (!(cond) && !(mr)->bad) {                                                       \
			(mr)->bad = true;                                                          \
			fprintf(stderr,                                                            \
			        "%s:%d: seed %llu op %d (%s): CHECK(%s) failed: ", __FILE__,       \
			        __LINE__, (unsigned long long)(mr)->seed, (mr)->op, (mr)->opname,  \
			        #cond);                                                            \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
		}                                                                                  \
	} while (0)

static uint64_t mr_rnd(struct mrun *mr, uint64_t n)
{
	return n ? xs(&mr->rng) % n : 0;
}

/* After every operation: every done() that is due happened exactly once
 * with the model's result, no other; the status matches the model. */
static void mr_verify(struct mrun *mr)
{
	struct model *m = &mr->m;
	unsigned parked = 0;
	for (int k = 0; k < NSLOT; k++) {
		struct slot *sl = &mr->sl[k];
		if (sl->parked) {
			ssize_t e = m_eval(m, sl->r.w.kind, sl->r.w.off, sl->r.w.len);
			if (e != STREAM_PARKED) {
				sl->parked = false;
				sl->exp_calls++;
				sl->exp_result = e;
			} else {
				parked++;
			}
		}
		int calls = atomic_load(&sl->r.calls);
		MCHECK(mr, calls == sl->exp_calls,
		       "slot %d (kind %d off %llu len %zu): %d done() calls, want %d", k,
		       sl->r.w.kind, (unsigned long long)sl->r.w.off, sl->r.w.len, calls,
		       sl->exp_calls);
		if (calls && calls == sl->exp_calls)
			MCHECK(mr, atomic_load(&sl->r.result) == sl->exp_result,
			       "slot %d (kind %d off %llu len %zu): result %lld, want %zd", k,
			       sl->r.w.kind, (unsigned long long)sl->r.w.off, sl->r.w.len,
			       (long long)atomic_load(&sl->r.result), sl->exp_result);
	}
	struct stream_info i;
	stream_get_info(mr->s, &i);
	MCHECK(mr, i.state == m->st, "state %s, want %s", stream_state_name(i.state),
	       stream_state_name(m->st));
	MCHECK(mr, i.frontier == m_run(m, 0), "frontier %llu, want %llu",
	       (unsigned long long)i.frontier, (unsigned long long)m_run(m, 0));
	MCHECK(mr, i.bytes == m_total(m), "bytes %llu, want %llu", (unsigned long long)i.bytes,
	       (unsigned long long)m_total(m));
	MCHECK(mr, i.length == m->length, "length %lld, want %lld", (long long)i.length,
	       (long long)m->length);
	MCHECK(mr, i.waiters == parked, "waiters %u, want %u", i.waiters, parked);
	if (m->st == STREAM_FAILED || m->st == STREAM_CANCELLED) {
		MCHECK(mr, i.error_offset == m->err_off, "error_offset %llu, want %llu",
		       (unsigned long long)i.error_offset, (unsigned long long)m->err_off);
		MCHECK(mr, i.error == m->err, "error %d, want %d", i.error, m->err);
	}
}

static uint64_t clamp0(int64_t v)
{
	return v < 0 ? 0 : (uint64_t)v;
}

/* An offset where things happen: near the frontier, the length, the
 * highest present byte, or anywhere. */
static uint64_t mr_pick_off(struct mrun *mr)
{
	int64_t fr = (int64_t)m_run(&mr->m, 0), top = (int64_t)m_top(&mr->m);
	int64_t d = (int64_t)mr_rnd(mr, 150) - 50;
	switch (mr_rnd(mr, 5)) {
	case 0:
	case 1:
		return clamp0(fr + d);
	case 2:
		if (mr->m.length >= 0)
			return clamp0(mr->m.length + d / 5);
		/* fall through */
	case 3:
		return clamp0(top + d / 5);
	default:
		return mr_rnd(mr, WLIM + 300);
	}
}

/* Bytes at pos for a sequential write: at most @max, never past WLIM,
 * sometimes just past the announced length. */
static size_t mr_seq_len(struct mrun *mr, size_t max)
{
	uint64_t pos = mr->m.seq;
	size_t n = 1 + (size_t)mr_rnd(mr, max);
	if (mr->m.length >= 0 && (uint64_t)mr->m.length >= pos && mr_rnd(mr, 3) == 0)
		n = (size_t)((uint64_t)mr->m.length - pos) + (size_t)mr_rnd(mr, 3);
	if (pos + n > WLIM)
		n = pos >= WLIM ? 0 : (size_t)(WLIM - pos);
	return n;
}

static void mr_op_append(struct mrun *mr)
{
	mr->opname = "append";
	size_t n = mr_seq_len(mr, 300);
	if (n == 0)
		return;
	uint64_t pos = mr->m.seq;
	unsigned char buf[WLIM];
	pat_fill(buf, pos, n);
	int want = m_mark(&mr->m, pos, n, true);
	int r = stream_append(mr->s, buf, n);
	MCHECK(mr, r == want, "append(%zu at %llu) = %d, want %d", n, (unsigned long long)pos, r,
	       want);
}

static void mr_op_fill_fd(struct mrun *mr)
{
	mr->opname = "fill_fd";
	size_t n = mr_seq_len(mr, 300);
	if (n == 0)
		return;
	uint64_t pos = mr->m.seq;
	unsigned char buf[WLIM];
	pat_fill(buf, pos, n);
	if (write(mr->pipe_w, buf, n) != (ssize_t)n)
		abort();
	size_t moved = 0;
	while (moved < n && !mr->bad) {
		ssize_t r = stream_fill_fd(mr->s, mr->pipe_r, n - moved);
		if (r > 0) {
			int want = m_mark(&mr->m, pos + moved, (uint64_t)r, true);
			MCHECK(mr, want == 0, "fill_fd moved %zd at %llu, model says %d", r,
			       (unsigned long long)(pos + moved), want);
			moved += (size_t)r;
			continue;
		}
		/* Errors come on the call whose bytes cross the length, or at
		 * once on a stopped stream. */
		int want = m_mark(&mr->m, pos + moved, n - moved, true);
		MCHECK(mr, r == want && r != 0, "fill_fd(%zu at %llu) = %zd, want %d", n - moved,
		       (unsigned long long)(pos + moved), r, want);
		break;
	}
	while (read(mr->pipe_r, buf, sizeof(buf)) > 0) /* drop what was refused */
		;
}

static void mr_op_write(struct mrun *mr)
{
	mr->opname = "write";
	uint64_t fr = m_run(&mr->m, 0);
	uint64_t off = fr + mr_rnd(mr, 700);
	off = off >= 100 ? off - 100 : 0;
	size_t n = 1 + (size_t)mr_rnd(mr, 200);
	if (mr->m.length >= 0 && mr_rnd(mr, 4) != 0) { /* mostly inside the length */
		uint64_t l = (uint64_t)mr->m.length;
		off = l ? mr_rnd(mr, l) : 0;
		if (off + n > l)
			n = (size_t)(l - off);
	}
	if (off + n > WLIM)
		n = off >= WLIM ? 0 : (size_t)(WLIM - off);
	if (n == 0)
		return;
	unsigned char buf[WLIM];
	pat_fill(buf, off, n);
	int want = m_mark(&mr->m, off, n, false);
	int r = stream_write(mr->s, off, buf, n);
	MCHECK(mr, r == want, "write(%zu at %llu) = %d, want %d", n, (unsigned long long)off, r,
	       want);
}

static void mr_op_wait(struct mrun *mr)
{
	mr->opname = "wait";
	int k = (int)mr_rnd(mr, NSLOT);
	struct slot *sl = &mr->sl[k];
	if (sl->parked)
		return;
	enum stream_wait_kind kind = (enum stream_wait_kind)mr_rnd(mr, 4);
	uint64_t off = mr_pick_off(mr);
	size_t len = mr_rnd(mr, 20) == 0 ? 0 : 1 + (size_t)mr_rnd(mr, 400);
	rec_reset(&sl->r, kind, off, len);
	sl->exp_calls = 0;
	ssize_t want = m_eval(&mr->m, kind, off, len);
	ssize_t r = stream_wait(mr->s, &sl->r.w);
	MCHECK(mr, r == want, "wait(kind %d off %llu len %zu) = %zd, want %zd", kind,
	       (unsigned long long)off, len, r, want);
	sl->parked = r == STREAM_PARKED;
}

static void mr_op_unwait(struct mrun *mr)
{
	mr->opname = "unwait";
	int k = (int)mr_rnd(mr, NSLOT);
	struct slot *sl = &mr->sl[k];
	if (sl->parked) {
		bool u = stream_unwait(mr->s, &sl->r.w);
		MCHECK(mr, u, "unwait of parked slot %d (kind %d off %llu len %zu) = false", k,
		       sl->r.w.kind, (unsigned long long)sl->r.w.off, sl->r.w.len);
		sl->parked = false;
		return;
	}
	if (mr_rnd(mr, 2)) { /* after done() or an immediate answer */
		bool u = stream_unwait(mr->s, &sl->r.w);
		MCHECK(mr, !u, "unwait of an answered slot %d = true", k);
		return;
	}
	/* Before the wait: the wait returns -EINTR and parks nothing. */
	rec_reset(&sl->r, STREAM_WAIT_RANGE, mr_pick_off(mr), 10);
	sl->exp_calls = 0;
	MCHECK(mr, !stream_unwait(mr->s, &sl->r.w), "unwait of a fresh waiter = true");
	ssize_t r = stream_wait(mr->s, &sl->r.w);
	MCHECK(mr, r == -EINTR, "wait after unwait = %zd", r);
}

static void mr_op_set_length(struct mrun *mr)
{
	mr->opname = "set_length";
	uint64_t top = m_top(&mr->m), len;
	switch (mr_rnd(mr, 4)) {
	case 0:
		len = top ? mr_rnd(mr, top) : 0; /* below present bytes */
		break;
	case 1:
		len = mr->m.length >= 0 ? (uint64_t)mr->m.length : top;
		break;
	default:
		len = top + mr_rnd(mr, 800);
		break;
	}
	if (len > WLIM - 10)
		len = WLIM - 10 > top ? WLIM - 10 : top;
	int want = m_set_length(&mr->m, len);
	int r = stream_set_length(mr->s, len);
	MCHECK(mr, r == want, "set_length(%llu) = %d, want %d", (unsigned long long)len, r, want);
}

/* Reads that the model says answer at once: stream_read and stream_copy. */
static void mr_op_read(struct mrun *mr)
{
	mr->opname = "read";
	uint64_t off = mr_pick_off(mr);
	size_t len = 1 + (size_t)mr_rnd(mr, 400);
	bool partial = mr_rnd(mr, 2);
	unsigned char buf[512];
	ssize_t want = m_eval(&mr->m, partial ? STREAM_WAIT_ANY : STREAM_WAIT_RANGE, off, len);
	if (want != STREAM_PARKED) {
		ssize_t r = stream_read(mr->s, buf, len, off, partial);
		MCHECK(mr, r == want, "read(off %llu len %zu partial %d) = %zd, want %zd",
		       (unsigned long long)off, len, partial, r, want);
		if (r > 0)
			MCHECK(mr, pat_ok(buf, off, (size_t)r),
			       "read(off %llu len %zu): wrong bytes", (unsigned long long)off, len);
	}
	bool all = m_run(&mr->m, off) >= off + len;
	int n = stream_copy(mr->s, buf, len, off);
	if (!all) {
		MCHECK(mr, n == -ERANGE, "stream_copy(off %llu len %zu) = %d, want -ERANGE",
		       (unsigned long long)off, len, n);
		return;
	}
	MCHECK(mr, n == 0, "stream_copy(off %llu len %zu) = %d, want 0", (unsigned long long)off,
	       len, n);
	if (n == 0)
		MCHECK(mr, pat_ok(buf, off, len), "stream_copy(off %llu len %zu): wrong bytes",
		       (unsigned long long)off, len);
}

static bool random_seed(uint64_t seed, int pipe_r, int pipe_w, const char *dir)
{
	struct mrun *mr = calloc(1, sizeof(*mr));
	mr->seed = seed;
	mr->rng = seed * 0x9E3779B97F4A7C15ULL + 0x1234567;
	mr->pipe_r = pipe_r;
	mr->pipe_w = pipe_w;
	mr->m.st = STREAM_IDLE;
	mr->m.length = -1;
	for (int k = 0; k < NSLOT; k++)
		rec_init(&mr->sl[k].r, STREAM_WAIT_RANGE, 0, 0);

	struct fake_src f;
	fake_init(&f);
	mr->s = fake_stream(&f, seed % 4 == 0 ? dir : NULL, "model");
	int nops = 30 + (int)mr_rnd(mr, 60), after_stop = 0;
	int start_at = (int)mr_rnd(mr, 4);
	bool was_idle_at_start = false;

	for (mr->op = 0; mr->op < nops && !mr->bad && after_stop < 6; mr->op++) {
		if (mr->op == start_at) {
			mr->opname = "start";
			was_idle_at_start = mr->m.st == STREAM_IDLE;
			if (was_idle_at_start)
				mr->m.st = STREAM_RUNNING;
			MCHECK(mr, stream_start(mr->s) == 0, "stream_start failed");
			mr_verify(mr);
			continue;
		}
		bool running = mr->m.st == STREAM_RUNNING;
		unsigned w = (unsigned)mr_rnd(mr, 100);
		if (running && w < 22)
			mr_op_append(mr);
		else if (running && w < 30)
			mr_op_fill_fd(mr);
		else if (running && w < 44)
			mr_op_write(mr);
		else if (w < 66)
			mr_op_wait(mr);
		else if (w < 74)
			mr_op_unwait(mr);
		else if (w < 79)
			mr_op_set_length(mr);
		else if (w < 91)
			mr_op_read(mr);
		else if (w < 94) {
			mr->opname = "end";
			if (mr->op > start_at) {
				m_end(&mr->m);
				stream_end(mr->s);
			}
		} else if (w < 97) {
			mr->opname = "fail";
			if (mr->op > start_at) {
				int err = mr_rnd(mr, 2) ? EIO : ECONNRESET;
				if (!m_terminal(&mr->m))
					m_stop(&mr->m, STREAM_FAILED, err);
				stream_fail(mr->s, err, "fail at op %d", mr->op);
			}
		} else {
			mr->opname = "cancel";
			if (!m_terminal(&mr->m))
				m_stop(&mr->m, STREAM_CANCELLED, ECANCELED);
			stream_cancel(mr->s, mr_rnd(mr, 2) ? NULL : "stop");
		}
		if (m_terminal(&mr->m))
			after_stop++;
		mr_verify(mr);
	}

	mr->opname = "final cancel";
	if (!m_terminal(&mr->m))
		m_stop(&mr->m, STREAM_CANCELLED, ECANCELED);
	stream_cancel(mr->s, NULL);
	mr_verify(mr);
	int starts = atomic_load(&f.starts), cancels = atomic_load(&f.cancels);
	MCHECK(mr, starts == (was_idle_at_start ? 1 : 0), "%d start() calls", starts);
	MCHECK(mr, cancels <= 1, "%d cancel() calls", cancels);
	stream_unref(mr->s);
	MCHECK(mr, atomic_load(&f.destroys) == 1, "%d destroy() calls", atomic_load(&f.destroys));
	fake_fini(&f);
	for (int k = 0; k < NSLOT; k++)
		rec_fini(&mr->sl[k].r);
	bool ok = !mr->bad;
	free(mr);
	return ok;
}

static void test_random_model(void)
{
	char *dir = t_tmpdir("model");
	int p[2];
	if (pipe(p) != 0)
		abort();
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	const char *one = getenv("STREAMFS_TEST_SEED");
	uint64_t first = one ? strtoull(one, NULL, 0) : 1;
	uint64_t last = one ? first : 3000;
	int bad = 0;
	for (uint64_t seed = first; seed <= last && bad < 3; seed++) {
		bool ok = random_seed(seed, p[0], p[1], dir);
		CHECK(ok);
		if (!ok) {
			fprintf(stderr,
			        "random model: seed %llu failed (STREAMFS_TEST_SEED=%llu "
			        "reruns it)\n",
			        (unsigned long long)seed, (unsigned long long)seed);
			bad++;
		}
	}
	close(p[0]);
	close(p[1]);
	CHECK_EQ(rmdir(dir), 0);
	free(dir);
}

int main(void)
{
	t_init();
	RUN(test_random_model);
	return t_finish("stream_model");
}
