/*
 * stream_test.h - what the stream engine's tests share (test_stream.c,
 * test_stream_threads.c, test_stream_model.c): a seeded generator, thread
 * start, a checked read, a started fake-fed stream and its end, and jobs
 * that run one engine call on a thread of their own.
 *
 * Functions are static inline: each program uses some of them.
 */
#ifndef STREAMFS_TEST_STREAM_TEST_H
#define STREAMFS_TEST_STREAM_TEST_H

#include "fake_source.h"

#include <stdlib.h>
#include <string.h>

static inline uint64_t xs(uint64_t *st)
{
	uint64_t x = *st;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*st = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static inline pthread_t spawn(void *(*fn)(void *), void *arg)
{
	pthread_t t;
	if (pthread_create(&t, NULL, fn, arg) != 0) {
		perror("pthread_create");
		abort();
	}
	return t;
}

/* stream_read, checked: result @want and the bytes are pat(). */
#define READ_EQ(s, off, len, partial, want)                                                        \
	do {                                                                                       \
		size_t rl_ = (len);                                                                \
		unsigned char *rb_ = malloc(rl_ ? rl_ : 1);                                        \
		ssize_t rr_ = stream_read((s), rb_, rl_, (off), (partial));                        \
		CHECK_EQ(rr_, (want));                                                             \
		if (rr_ > 0)                                                                       \
			CHECK(pat_ok(rb_, (off), (size_t)rr_));                                    \
		free(rb_);                                                                         \
	} while (0)

static inline struct stream *started(struct fake_src *f, const char *dir)
{
	fake_init(f);
	struct stream *s = fake_stream(f, dir, "s");
	CHECK_EQ(stream_start(s), 0);
	return s;
}

/* Drop the test's reference; the source must be destroyed exactly once. */
static inline void finish(struct stream *s, struct fake_src *f)
{
	stream_unref(s);
	CHECK_EQ(atomic_load(&f->destroys), 1);
	fake_fini(f);
}

static inline void info(struct stream *s, struct stream_info *i)
{
	memset(i, 0xa5, sizeof(*i));
	stream_get_info(s, i);
}

/* One engine call on a thread of its own (spawn(X_job, &job)). */
struct job {
	struct stream *s;
	uint64_t off;
	size_t len;
	bool partial;
	ssize_t result;
	int err;
	const char *msg;
};

static inline void *append_job(void *arg)
{
	struct job *j = arg;
	j->result = pat_append(j->s, j->off, j->len);
	return NULL;
}

static inline void *read_job(void *arg)
{
	struct job *j = arg;
	unsigned char *b = malloc(j->len ? j->len : 1);
	j->result = stream_read(j->s, b, j->len, j->off, j->partial);
	if (j->result > 0 && !pat_ok(b, j->off, (size_t)j->result))
		j->result = -9999; /* wrong bytes */
	free(b);
	return NULL;
}

static inline void *fail_job(void *arg)
{
	struct job *j = arg;
	stream_fail(j->s, j->err, "%s", j->msg);
	return NULL;
}

#endif
