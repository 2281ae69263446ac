/*
 * test_ioloop.c - unit tests for the I/O loop (ioloop.c): calls run in
 * order in the loop thread, and ioloop_others_wait() tells a callback
 * whether other work waits behind it (the URL fill uses it to let a
 * reader's range request go first).
 */
#include "harness.h"
#include "streamfs/ioloop.h"
#include "xpthread.h"

#include <sys/epoll.h>
#include <unistd.h>

struct rec {
	struct ioloop *l;
	pthread_mutex_t m;
	pthread_cond_t c;
	int order[8];
	int n;
	bool others[8];
	bool done;
};

static void finish(struct rec *r)
{
	xpthread_mutex_lock(&r->m);
	r->done = true;
	xpthread_cond_broadcast(&r->c);
	xpthread_mutex_unlock(&r->m);
}

static void wait_done(struct rec *r)
{
	xpthread_mutex_lock(&r->m);
	while (!r->done)
		xpthread_cond_wait(&r->c, &r->m);
	xpthread_mutex_unlock(&r->m);
}

/* ---- calls ------------------------------------------------------------ */

static struct rec g_calls;

static void call_last(void *arg)
{
	struct rec *r = &g_calls;
	r->order[r->n] = (int)(intptr_t)arg;
	r->others[r->n++] = ioloop_others_wait(r->l);
	finish(r);
}

static void call_first(void *arg)
{
	struct rec *r = &g_calls;
	CHECK(ioloop_in_loop(r->l));
	r->order[r->n] = (int)(intptr_t)arg;
	r->others[r->n++] = ioloop_others_wait(r->l); /* nothing queued yet */
	CHECK_EQ(ioloop_call(r->l, call_last, (void *)2), 0);
	r->order[r->n] = 0;
	r->others[r->n++] = ioloop_others_wait(r->l); /* now a call waits */
}

static void test_calls_wait_behind(void)
{
	struct rec *r = &g_calls;
	xpthread_mutex_init(&r->m, NULL);
	xpthread_cond_init(&r->c, NULL);
	r->l = ioloop_new();
	CHECK(r->l != NULL);
	if (!r->l)
		return;
	CHECK_EQ(ioloop_start(r->l), 0);
	CHECK(!ioloop_in_loop(r->l));
	CHECK_EQ(ioloop_call(r->l, call_first, (void *)1), 0);
	wait_done(r);
	ioloop_stop(r->l);
	ioloop_free(r->l);
	CHECK_EQ(r->n, 3);
	CHECK_EQ(r->order[0], 1);
	CHECK(!r->others[0]);
	CHECK_EQ(r->order[1], 0);
	CHECK(r->others[1]);
	CHECK_EQ(r->order[2], 2);
	CHECK(!r->others[2]);
}

/* ---- events of one batch ---------------------------------------------- */

static struct rec g_ev;
static int g_pipes[2][2];
static struct ioloop_watch g_w[2];

static void ev_cb(struct ioloop_watch *w, uint32_t events)
{
	struct rec *r = &g_ev;
	CHECK(events & EPOLLIN);
	char c;
	CHECK_EQ(read(w->fd, &c, 1), 1);
	ioloop_del(r->l, w);
	r->order[r->n] = (int)(w - g_w);
	r->others[r->n++] = ioloop_others_wait(r->l);
	if (r->n == 2)
		finish(r);
}

static void add_both(void *arg)
{
	(void)arg;
	/* Both are readable already: the next epoll_wait returns them in
	 * one batch, and the first callback has the other behind it. */
	for (int i = 0; i < 2; i++)
		CHECK_EQ(ioloop_add(g_ev.l, &g_w[i], EPOLLIN), 0);
}

static void test_events_wait_behind(void)
{
	struct rec *r = &g_ev;
	xpthread_mutex_init(&r->m, NULL);
	xpthread_cond_init(&r->c, NULL);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(pipe(g_pipes[i]), 0);
		CHECK_EQ(write(g_pipes[i][1], "x", 1), 1);
		g_w[i].fd = g_pipes[i][0];
		g_w[i].cb = ev_cb;
	}
	r->l = ioloop_new();
	CHECK(r->l != NULL);
	if (!r->l)
		return;
	CHECK_EQ(ioloop_start(r->l), 0);
	CHECK_EQ(ioloop_call(r->l, add_both, NULL), 0);
	wait_done(r);
	ioloop_stop(r->l);
	ioloop_free(r->l);
	CHECK_EQ(r->n, 2);
	CHECK(r->order[0] != r->order[1]);
	CHECK(r->others[0]);  /* the other event was still to run */
	CHECK(!r->others[1]); /* the last of the batch */
	for (int i = 0; i < 2; i++) {
		close(g_pipes[i][0]);
		close(g_pipes[i][1]);
	}
}

int main(void)
{
	t_init();
	RUN(test_calls_wait_behind);
	RUN(test_events_wait_behind);
	return t_finish("ioloop");
}
