/*
 * url_multi.c - the one curl multi handle of the daemon, driven by the
 * I/O loop through curl's socket API.
 *
 * curl says which sockets to watch (socket callback) and when to wake it
 * (timer callback); the loop calls curl_multi_socket_action() back and
 * hands each finished request to the done() hook. No thread per
 * transfer and no lock around curl: only the loop thread touches the
 * multi handle, which is why every function here asserts it (but the
 * global cleanup, which runs once the loop is gone).
 *
 * This file knows nothing of streams: it moves requests, url_xfer.c and
 * the rest of the URL source decide what they mean.
 */
#include "url.h"

#include "log.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

/* The shared multi handle, loop thread only. */
static struct {
	CURLM *multi;
	struct ioloop *loop;
	struct ioloop_timer timer;
	void (*done)(CURL *easy, CURLcode rc);
	void (*after)(void); /* after every round, before the finished requests */
	bool closing;        /* the global cleanup: the loop may be gone */
	uint64_t round;      /* counts calls of curl_multi_socket_action() */
	int requests;        /* in the multi handle, running or about to */
} g_multi;

/* A socket curl asked us to watch. */
struct sock_watch {
	struct ioloop_watch w;
	bool added;
};

/* Only asserts use it: unused when NDEBUG compiles them out. */
__attribute__((unused)) static inline bool in_loop(void)
{
	return g_multi.closing || ioloop_in_loop(g_multi.loop);
}

/* Hand every finished request to done(), after the round's after(). */
static void multi_check(void)
{
	g_multi.after();
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(g_multi.multi, &left)))
		if (m->msg == CURLMSG_DONE)
			g_multi.done(m->easy_handle, m->data.result);
}

static void sock_event(struct ioloop_watch *w, uint32_t events)
{
	assert(in_loop());
	int mask = 0;
	if (events & EPOLLIN)
		mask |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		mask |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		mask |= CURL_CSELECT_ERR;
	g_multi.round++;
	int running;
	curl_multi_socket_action(g_multi.multi, w->fd, mask, &running);
	multi_check();
}

static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	assert(in_loop());
	struct sock_watch *sw = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (sw) {
			if (sw->added && !g_multi.closing)
				ioloop_del(g_multi.loop, &sw->w);
			free(sw);
			curl_multi_assign(g_multi.multi, fd, NULL);
		}
		return 0;
	}
	uint32_t ev = 0;
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (!sw) {
		sw = calloc(1, sizeof(*sw));
		if (!sw)
			return -1;
		sw->w.fd = fd;
		sw->w.cb = sock_event;
		curl_multi_assign(g_multi.multi, fd, sw);
	}
	int r =
	    sw->added ? ioloop_mod(g_multi.loop, &sw->w, ev) : ioloop_add(g_multi.loop, &sw->w, ev);
	if (r == 0)
		sw->added = true;
	else
		log_error("url: cannot watch socket %d: %s", fd, strerror(-r));
	return 0;
}

static void timer_fired(struct ioloop_timer *t)
{
	assert(in_loop());
	g_multi.round++;
	int running;
	curl_multi_socket_action(g_multi.multi, CURL_SOCKET_TIMEOUT, 0, &running);
	multi_check();
}

static int timer_cb(CURLM *multi, long ms, void *userp)
{
	assert(in_loop());
	if (g_multi.closing)
		return 0;
	if (ms < 0)
		ioloop_timer_disarm(g_multi.loop, &g_multi.timer);
	else
		ioloop_timer_arm(g_multi.loop, &g_multi.timer, (uint64_t)ms);
	return 0;
}

int url_multi_setup(struct ioloop *loop, void (*done)(CURL *easy, CURLcode rc), void (*after)(void))
{
	assert(ioloop_in_loop(loop));
	if (g_multi.multi)
		return 0;
	g_multi.multi = curl_multi_init();
	if (!g_multi.multi)
		return -ENOMEM;
	g_multi.loop = loop;
	g_multi.done = done;
	g_multi.after = after;
	g_multi.timer.cb = timer_fired;
	curl_multi_setopt(g_multi.multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(g_multi.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	return 0;
}

uint64_t url_multi_round(void)
{
	assert(in_loop());
	return g_multi.round;
}

bool url_multi_others_wait(void)
{
	assert(in_loop());
	/* Counted from add and remove, not from curl's running count: a
	 * request just added runs only once curl is called for it, which is
	 * after the round in progress. The request calling back counts too. */
	return g_multi.requests > 1 || ioloop_others_wait(g_multi.loop);
}

CURLMcode url_multi_add(CURL *easy)
{
	assert(in_loop());
	CURLMcode mc = curl_multi_add_handle(g_multi.multi, easy);
	if (mc == CURLM_OK)
		g_multi.requests++;
	return mc;
}

void url_multi_remove(CURL *easy)
{
	if (!easy)
		return;
	assert(in_loop());
	curl_multi_remove_handle(g_multi.multi, easy);
	g_multi.requests--;
}

int source_url_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void source_url_global_cleanup(void)
{
	if (g_multi.multi) {
		g_multi.closing = true; /* the loop may be gone: only free */
		curl_multi_cleanup(g_multi.multi);
		g_multi.multi = NULL;
	}
	curl_global_cleanup();
}
