/*
 * fake_source.h - the unit tests' harness and scripted stream source.
 *
 * Harness: CHECK()/CHECK_EQ() count passes and failures from any thread and
 * print file:line and the running test on a failure; t_begin() names the
 * test and re-arms a 60 s watchdog (SIGALRM) that prints the test that hung
 * and _exit(1)s, so an engine bug fails the run instead of hanging it.
 *
 * Fake source: kind "fake". start()/cancel()/destroy() only record that
 * they were called (destroy does not free: the test owns the struct), and
 * start() can be held on a gate so a test can act "during start()". The
 * test itself plays the producer with stream_append/stream_write/... from
 * its own thread or a producer thread.
 *
 * Waiter recorder: struct rec wraps a stream_waiter whose done() counts its
 * calls and keeps the result, and lets another thread block until done()
 * has run (a condition variable, never a sleep).
 */
#ifndef STREAMFS_TEST_FAKE_SOURCE_H
#define STREAMFS_TEST_FAKE_SOURCE_H

#include "streamfs/stream.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- harness ---------------------------------------------------------- */

extern atomic_int t_passed, t_failed;
extern _Atomic(const char *) t_current;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			atomic_fetch_add(&t_passed, 1);                                            \
		} else {                                                                           \
			atomic_fetch_add(&t_failed, 1);                                            \
			fprintf(stderr, "%s:%d: [%s] CHECK(%s) failed\n", __FILE__, __LINE__,      \
			        atomic_load(&t_current), #cond);                                   \
		}                                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long ca_ = (long long)(a), cb_ = (long long)(b);                              \
		if (ca_ == cb_) {                                                                  \
			atomic_fetch_add(&t_passed, 1);                                            \
		} else {                                                                           \
			atomic_fetch_add(&t_failed, 1);                                            \
			fprintf(stderr, "%s:%d: [%s] CHECK_EQ(%s, %s) failed: %lld != %lld\n",     \
			        __FILE__, __LINE__, atomic_load(&t_current), #a, #b, ca_, cb_);    \
		}                                                                                  \
	} while (0)

/* Install the watchdog handler; silences the engine's log unless
 * STREAMFS_TEST_LOG is set (failure paths log by design). */
void t_init(void);
/* Name the running test and give it 60 s. */
void t_begin(const char *name);
/* Print "@prog: N passed, M failed" and return the exit status. */
int t_finish(const char *prog);

#define RUN(fn)                                                                                    \
	do {                                                                                       \
		t_begin(#fn);                                                                      \
		fn();                                                                              \
	} while (0)

/* mkdtemp() under /tmp; the caller rmdir()s it. Aborts on failure. */
char *t_tmpdir(const char *tag);

/* The deterministic byte at offset @off of every test stream. */
static inline unsigned char pat(uint64_t off)
{
	uint64_t x = off * 0x9E3779B97F4A7C15ULL;
	return (unsigned char)((x >> 29) ^ (off >> 8) ^ off);
}
void pat_fill(unsigned char *buf, uint64_t off, size_t len);
/* True if @buf holds pat() for [off, off+len). */
bool pat_ok(const unsigned char *buf, uint64_t off, size_t len);

/* ---- fake source ------------------------------------------------------ */

struct fake_src {
	pthread_mutex_t m;
	pthread_cond_t c;
	int start_result; /* what start() returns */
	bool gate_start;  /* start() blocks until fake_open_start() */
	bool in_start;    /* protected by m */
	bool start_open;  /* protected by m */
	atomic_int starts, cancels, destroys;
	atomic_int cancels_in_start; /* cancel() calls made while start() ran */
	struct stream *s;
};

extern const struct stream_source_ops fake_ops;

void fake_init(struct fake_src *f);
void fake_fini(struct fake_src *f);
/* A stream fed by @f, stored in RAM (@dir NULL) or in @dir. Aborts on failure. */
struct stream *fake_stream(struct fake_src *f, const char *dir, const char *name);
/* Block until start() is running (with gate_start set). */
void fake_wait_in_start(struct fake_src *f);
void fake_open_start(struct fake_src *f);

/* ---- waiter recorder -------------------------------------------------- */

struct rec {
	struct stream_waiter w;
	atomic_int calls;
	atomic_llong result;
	pthread_mutex_t m;
	pthread_cond_t c;
};

void rec_init(struct rec *r, enum stream_wait_kind kind, uint64_t off, size_t len);
/* Re-arm for another stream_wait() (resets calls). */
void rec_reset(struct rec *r, enum stream_wait_kind kind, uint64_t off, size_t len);
void rec_fini(struct rec *r);
/* Block until done() has been called; returns its result. */
ssize_t rec_join(struct rec *r);

#endif
