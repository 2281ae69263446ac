/*
 * fake_source.h - a scripted stream source and the test data of the engine's
 * unit tests. It includes harness.h (CHECK, RUN, ...), which every unit
 * test uses.
 *
 * Test data: pat(off) is the byte at @off of every test stream.
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

#include "harness.h"
#include "streamfs/stream.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- test data ------------------------------------------------------- */

/* The deterministic byte at offset @off of every test stream. */
static inline unsigned char pat(uint64_t off)
{
	uint64_t x = off * 0x9E3779B97F4A7C15ULL;
	return (unsigned char)((x >> 29) ^ (off >> 8) ^ off);
}
void pat_fill(unsigned char *buf, uint64_t off, size_t len);
/* True if @buf holds pat() for [off, off+len). */
bool pat_ok(const unsigned char *buf, uint64_t off, size_t len);
/* stream_append() of pat() for [off, off+len) (@off must be the frontier). */
int pat_append(struct stream *s, uint64_t off, size_t len);
/* stream_write() of pat() for [off, off+len). */
int pat_write(struct stream *s, uint64_t off, size_t len);

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
