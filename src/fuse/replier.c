/*
 * replier.c - the thread that sends the replies of reads woken by a write.
 *
 * A read parked at the frontier is woken by the thread that made its bytes
 * present: for every source, the I/O thread, which also receives and
 * stores every byte. Sending the reply there (a copy out of the store and
 * the kernel's copy into the reader) kept that one thread busy with work
 * that another CPU can do while it goes back to receiving. So a woken read
 * is handed here instead, and this thread answers it (park.c's answer()).
 *
 * Only where a woken read's bytes stay present until the reply is sent:
 * no --cache-size budget (which evicts) and no keep= (which drops). There
 * the waiter's pin ends when it is woken, and a budget tight enough could
 * evict the bytes of a queued reply again and again; those replies are
 * sent by the waking thread, as before. (A copy that finds its bytes gone
 * would still be safe, park.c parks the read again, but it would not make
 * progress under such a budget.)
 *
 * A queued pending is still on fs->parked: park_wake_all() waits for its
 * reply like for any other, so fs_shutdown() stops this thread only after
 * the queue is empty. The thread starts when the first read it would
 * answer parks (replier_wanted(), replier_start()), so that its start (the thread, its
 * malloc arena, its reply buffer) overlaps that read's wait instead of
 * coming after its bytes: on a fresh mount the first woken read took
 * ~0.2 ms more than the next ones.
 */
#include "fs_int.h"

#include "log.h"
#include "xpthread.h"

#include <string.h>

static void *replier_main(void *arg)
{
	struct fs *fs = arg;
	pthread_setname_np(pthread_self(), "streamfs-reply"); /* top -H, perf */
	reply_buf_warm(); /* before the first reply, not during it */
	xpthread_mutex_lock(&fs->reply_lock);
	for (;;) {
		struct pending *p = TAILQ_FIRST(&fs->replies);
		if (!p) {
			if (fs->reply_state == REPLY_STOPPED)
				break;
			xpthread_cond_wait(&fs->reply_cond, &fs->reply_lock);
			continue;
		}
		TAILQ_REMOVE(&fs->replies, p, qlink);
		xpthread_mutex_unlock(&fs->reply_lock);
		pending_answer(p, p->result);
		xpthread_mutex_lock(&fs->reply_lock);
	}
	xpthread_mutex_unlock(&fs->reply_lock);
	return NULL;
}

/* Would the replies of @s's woken reads come here? */
static bool replies_here(const struct fs *fs, struct stream *s)
{
	return !fs->cache_bounded && !stream_drops_bytes(s);
}

/* Start the thread if it is not yet. Under fs->reply_lock; returns
 * pthread_create()'s error, said by the caller once (the wakers then go
 * on replying themselves). */
static int start_locked(struct fs *fs)
{
	int e = 0;
	if (fs->reply_state == REPLY_NONE) {
		e = pthread_create(&fs->reply_thread, NULL, replier_main, fs);
		/* Stored atomically for replier_wanted(), which reads it
		 * without the lock. */
		__atomic_store_n(&fs->reply_state, e == 0 ? REPLY_RUNNING : REPLY_FAILED,
		                 __ATOMIC_RELEASE);
	}
	return e;
}

bool replier_wanted(struct fs *fs, struct stream *s)
{
	/* On every parked read: once the thread was started (or could not
	 * be), no lock is taken here. A stale REPLY_NONE only costs a call
	 * of replier_start() that finds it started. */
	return __atomic_load_n(&fs->reply_state, __ATOMIC_ACQUIRE) == REPLY_NONE &&
	       replies_here(fs, s);
}

void replier_start(struct fs *fs)
{
	xpthread_mutex_lock(&fs->reply_lock);
	int e = start_locked(fs);
	xpthread_mutex_unlock(&fs->reply_lock);
	if (e)
		log_warn("cannot start the reply thread: %s", strerror(e));
}

bool replier_take(struct fs *fs, struct pending *p, ssize_t r)
{
	if (!replies_here(fs, p->s))
		return false;
	xpthread_mutex_lock(&fs->reply_lock);
	int e = start_locked(fs);
	bool take = fs->reply_state == REPLY_RUNNING;
	if (take) {
		p->result = r;
		TAILQ_INSERT_TAIL(&fs->replies, p, qlink);
		xpthread_cond_signal(&fs->reply_cond);
	}
	xpthread_mutex_unlock(&fs->reply_lock);
	if (e)
		log_warn("cannot start the reply thread: %s", strerror(e));
	return take;
}

void replier_stop(struct fs *fs)
{
	xpthread_mutex_lock(&fs->reply_lock);
	bool join = fs->reply_state == REPLY_RUNNING;
	__atomic_store_n(&fs->reply_state, REPLY_STOPPED, __ATOMIC_RELEASE);
	xpthread_cond_signal(&fs->reply_cond);
	xpthread_mutex_unlock(&fs->reply_lock);
	/* It leaves once the queue is empty: whatever was queued is sent. */
	if (join)
		pthread_join(fs->reply_thread, NULL);
}
