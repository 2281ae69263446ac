/*
 * fake_source.c - see fake_source.h.
 */
#include "fake_source.h"

#include "streamfs/store.h"

#include <stdlib.h>
#include <string.h>

void pat_fill(unsigned char *buf, uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pat(off + i);
}

bool pat_ok(const unsigned char *buf, uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pat(off + i))
			return false;
	return true;
}

int pat_append(struct stream *s, uint64_t off, size_t len)
{
	unsigned char *b = malloc(len ? len : 1);
	pat_fill(b, off, len);
	int r = stream_append(s, b, len);
	free(b);
	return r;
}

int pat_write(struct stream *s, uint64_t off, size_t len)
{
	unsigned char *b = malloc(len ? len : 1);
	pat_fill(b, off, len);
	int r = stream_write(s, off, b, len);
	free(b);
	return r;
}

/* ---- fake source ------------------------------------------------------ */

static int fake_start(struct stream *s, void *src)
{
	struct fake_src *f = src;
	atomic_fetch_add(&f->starts, 1);
	pthread_mutex_lock(&f->m);
	f->in_start = true;
	pthread_cond_broadcast(&f->c);
	while (f->gate_start && !f->start_open)
		pthread_cond_wait(&f->c, &f->m);
	f->in_start = false;
	pthread_mutex_unlock(&f->m);
	return f->start_result;
}

static void fake_cancel(struct stream *s, void *src)
{
	struct fake_src *f = src;
	pthread_mutex_lock(&f->m);
	if (f->in_start)
		atomic_fetch_add(&f->cancels_in_start, 1);
	pthread_mutex_unlock(&f->m);
	atomic_fetch_add(&f->cancels, 1);
}

static void fake_destroy(void *src)
{
	struct fake_src *f = src;
	atomic_fetch_add(&f->destroys, 1);
}

const struct stream_source_ops fake_ops = {
    .kind = "fake",
    .start = fake_start,
    .cancel = fake_cancel,
    .destroy = fake_destroy,
};

void fake_init(struct fake_src *f)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->m, NULL);
	pthread_cond_init(&f->c, NULL);
}

void fake_fini(struct fake_src *f)
{
	pthread_mutex_destroy(&f->m);
	pthread_cond_destroy(&f->c);
}

struct stream *fake_stream(struct fake_src *f, const char *dir, const char *name)
{
	struct store *st = store_open(dir, "t");
	if (!st) {
		perror("store_open");
		abort();
	}
	struct stream *s = stream_new(name, st, &fake_ops, f);
	if (!s) {
		perror("stream_new");
		abort();
	}
	f->s = s;
	return s;
}

void fake_wait_in_start(struct fake_src *f)
{
	pthread_mutex_lock(&f->m);
	while (!f->in_start)
		pthread_cond_wait(&f->c, &f->m);
	pthread_mutex_unlock(&f->m);
}

void fake_open_start(struct fake_src *f)
{
	pthread_mutex_lock(&f->m);
	f->start_open = true;
	pthread_cond_broadcast(&f->c);
	pthread_mutex_unlock(&f->m);
}

/* ---- waiter recorder -------------------------------------------------- */

static void rec_done(struct stream_waiter *w, ssize_t result)
{
	struct rec *r = w->data;
	pthread_mutex_lock(&r->m);
	atomic_store(&r->result, result);
	atomic_fetch_add(&r->calls, 1);
	pthread_cond_broadcast(&r->c);
	pthread_mutex_unlock(&r->m);
}

void rec_reset(struct rec *r, enum stream_wait_kind kind, uint64_t off, size_t len)
{
	stream_waiter_init(&r->w);
	r->w.kind = kind;
	r->w.off = off;
	r->w.len = len;
	r->w.done = rec_done;
	r->w.data = r;
	atomic_store(&r->calls, 0);
	atomic_store(&r->result, 12345);
}

void rec_init(struct rec *r, enum stream_wait_kind kind, uint64_t off, size_t len)
{
	pthread_mutex_init(&r->m, NULL);
	pthread_cond_init(&r->c, NULL);
	rec_reset(r, kind, off, len);
}

void rec_fini(struct rec *r)
{
	pthread_mutex_destroy(&r->m);
	pthread_cond_destroy(&r->c);
}

ssize_t rec_join(struct rec *r)
{
	pthread_mutex_lock(&r->m);
	while (atomic_load(&r->calls) == 0)
		pthread_cond_wait(&r->c, &r->m);
	pthread_mutex_unlock(&r->m);
	return (ssize_t)atomic_load(&r->result);
}
