/*
 * ioloop.c - see ioloop.h.
 *
 * One epoll set, an eventfd that wakes the loop for queued calls, and a
 * short list of timers sorted by due time (there are few: one per URL
 * transfer at most). Callbacks run without any loop lock held; the only
 * lock guards the call queue.
 */
#include "streamfs/ioloop.h"

#include "log.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 64

struct call {
	struct call *next;
	void (*fn)(void *);
	void *arg;
};

struct ioloop {
	int epfd, evfd;
	pthread_t thread;
	bool started;

	pthread_mutex_t lock;
	/* protected by lock */
	struct call *head, *tail;
	bool stopping, stopped;

	/* loop thread only */
	struct ioloop_timer *timers; /* sorted by due_ms */
	struct epoll_event batch[MAX_EVENTS];
	int nbatch;
	int ibatch;         /* the event whose callback runs */
	bool calls_waiting; /* a callback saw queued calls (ioloop_others_wait) */
};

uint64_t ioloop_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct ioloop *ioloop_new(void)
{
	struct ioloop *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->epfd < 0 || l->evfd < 0)
		goto err;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) < 0)
		goto err;
	pthread_mutex_init(&l->lock, NULL);
	return l;
err:;
	int e = errno;
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->evfd >= 0)
		close(l->evfd);
	free(l);
	errno = e;
	return NULL;
}

static void wake(struct ioloop *l)
{
	uint64_t one = 1;
	ssize_t n = write(l->evfd, &one, sizeof(one));
	(void)n; /* EAGAIN means a wake-up is already pending */
}

int ioloop_call(struct ioloop *l, void (*fn)(void *), void *arg)
{
	struct call *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->next = NULL;
	c->fn = fn;
	c->arg = arg;
	pthread_mutex_lock(&l->lock);
	if (l->stopped) {
		pthread_mutex_unlock(&l->lock);
		free(c);
		return -ESHUTDOWN;
	}
	if (l->tail)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
	pthread_mutex_unlock(&l->lock);
	wake(l);
	return 0;
}

/* Run the queued calls; returns false once asked to stop. */
static bool run_calls(struct ioloop *l)
{
	uint64_t v;
	ssize_t n = read(l->evfd, &v, sizeof(v));
	(void)n;
	pthread_mutex_lock(&l->lock);
	struct call *c = l->head;
	l->head = l->tail = NULL;
	bool stop = l->stopping;
	if (stop)
		l->stopped = true; /* nothing more is queued after this batch */
	pthread_mutex_unlock(&l->lock);
	while (c) {
		struct call *next = c->next;
		c->fn(c->arg);
		free(c);
		c = next;
	}
	return !stop;
}

static int next_timeout(struct ioloop *l)
{
	if (!l->timers)
		return -1;
	uint64_t now = ioloop_now_ms();
	if (l->timers->due_ms <= now)
		return 0;
	uint64_t d = l->timers->due_ms - now;
	return d > 60000 ? 60000 : (int)d;
}

static void run_timers(struct ioloop *l)
{
	uint64_t now = ioloop_now_ms();
	while (l->timers && l->timers->due_ms <= now) {
		struct ioloop_timer *t = l->timers;
		l->timers = t->next;
		t->armed = false;
		t->next = NULL;
		t->cb(t);
	}
}

static void *loop_main(void *arg)
{
	struct ioloop *l = arg;
	pthread_setname_np(pthread_self(), "streamfs-io"); /* top -H, perf */
	for (;;) {
		int n = epoll_wait(l->epfd, l->batch, MAX_EVENTS, next_timeout(l));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("ioloop: epoll_wait: %s", strerror(errno));
			n = 0;
		}
		l->nbatch = n;
		bool calls = false;
		for (int i = 0; i < l->nbatch; i++) {
			struct ioloop_watch *w = l->batch[i].data.ptr;
			l->ibatch = i;
			if (!w) {
				calls = true; /* the eventfd, or a watch deleted meanwhile */
				continue;
			}
			w->cb(w, l->batch[i].events);
		}
		l->nbatch = 0;
		/* Calls before timers, also those a callback saw queued before
		 * their wake-up reached epoll: a callback that stopped early
		 * for them (ioloop_others_wait) re-arms itself with a timer, which
		 * must not run first. */
		if (calls || l->calls_waiting) {
			l->calls_waiting = false;
			if (!run_calls(l))
				break;
		}
		run_timers(l);
	}
	return NULL;
}

int ioloop_start(struct ioloop *l)
{
	int r = pthread_create(&l->thread, NULL, loop_main, l);
	if (r)
		return -r;
	l->started = true;
	return 0;
}

void ioloop_stop(struct ioloop *l)
{
	if (!l->started)
		return;
	pthread_mutex_lock(&l->lock);
	l->stopping = true;
	pthread_mutex_unlock(&l->lock);
	wake(l);
	pthread_join(l->thread, NULL);
	l->started = false;
}

void ioloop_free(struct ioloop *l)
{
	if (!l)
		return;
	ioloop_stop(l);
	for (struct call *c = l->head, *n; c; c = n) {
		n = c->next;
		free(c);
	}
	close(l->epfd);
	close(l->evfd);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

bool ioloop_in_loop(const struct ioloop *l)
{
	return l->started && pthread_equal(pthread_self(), l->thread);
}

int ioloop_add(struct ioloop *l, struct ioloop_watch *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};
	return epoll_ctl(l->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0 ? -errno : 0;
}

int ioloop_mod(struct ioloop *l, struct ioloop_watch *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0 ? -errno : 0;
}

void ioloop_del(struct ioloop *l, struct ioloop_watch *w)
{
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	/* Events for w may still sit in the batch being dispatched. */
	for (int i = 0; i < l->nbatch; i++)
		if (l->batch[i].data.ptr == w)
			l->batch[i].data.ptr = NULL;
}

bool ioloop_others_wait(struct ioloop *l)
{
	assert(ioloop_in_loop(l));
	for (int i = l->ibatch + 1; i < l->nbatch; i++)
		if (l->batch[i].data.ptr)
			return true;
	pthread_mutex_lock(&l->lock);
	bool calls = l->head != NULL;
	pthread_mutex_unlock(&l->lock);
	if (calls)
		l->calls_waiting = true;
	return calls;
}

void ioloop_timer_disarm(struct ioloop *l, struct ioloop_timer *t)
{
	if (!t->armed)
		return;
	for (struct ioloop_timer **p = &l->timers; *p; p = &(*p)->next) {
		if (*p == t) {
			*p = t->next;
			break;
		}
	}
	t->armed = false;
	t->next = NULL;
}

void ioloop_timer_arm(struct ioloop *l, struct ioloop_timer *t, uint64_t ms)
{
	ioloop_timer_disarm(l, t);
	t->due_ms = ioloop_now_ms() + ms;
	struct ioloop_timer **p = &l->timers;
	while (*p && (*p)->due_ms <= t->due_ms)
		p = &(*p)->next;
	t->next = *p;
	*p = t;
	t->armed = true;
}
