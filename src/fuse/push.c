/*
 * push.c - storing what direct_io readers were sent into the kernel's page
 * cache, so that the next open of the complete file is served by the
 * kernel alone.
 *
 * A file is opened direct_io while its stream runs (fs.c says why), and a
 * direct_io read leaves nothing in the page cache: without this, the second
 * read of a complete file would come through FUSE again. Replies note the
 * ranges they sent (stream_copy_reply(), a rangeset add), and this thread
 * copies the noted ranges from the store into the page cache with
 * FUSE_NOTIFY_STORE, whole pages from the start of the first to the end of
 * the last (the last page of the file ends at its size). It works on
 * adopted handles:
 *  - at open, a stream of known length (an announced Content-Length, a
 *    size= option) gets a handle of this thread's own (park.c): its size
 *    in the kernel is final already, so pages stored while it runs stay
 *    (a size change would drop them). Its noted bytes below the frontier
 *    (all there) are pushed as they come, every PUSH_LIVE_MS, and the rest
 *    once it is complete. A second read right after the first then finds
 *    the file in the page cache (1 GiB from nginx: 1.1-3.4 GB/s through
 *    FUSE before, 7-8 GB/s with this);
 *  - a released direct_io handle of any other stream (a command, a URL
 *    without a length) is adopted too, and pushed once its stream is
 *    complete: until then its size in the kernel still grows.
 * What is left once a stream is complete goes highest first (see
 * push_stream()): a second reader starts at the other end.
 *
 * At the lowest priority (SCHED_IDLE), not in the reply path: storing into
 * the page cache (page allocation, LRU insertion, a copy) costs as much as
 * the reply, and done in the reply path it halved the first read on a fast
 * source (369 vs 925 MiB/s for 1 GiB from nginx). Run on idle CPU time, the
 * push as it goes costs that first read about a tenth. Whole pages come
 * from the store (present bytes never change; a changed source fails the
 * stream), so a page stored once stays right; bytes evicted since are
 * skipped, never guessed.
 *
 * The adopted handle keeps the node (and so its inode number, which is
 * reused only after the node is freed) and the stream alive until the push
 * is done: a page is never stored under a number that names another file.
 * At most PUSH_RAM_SHARE of the machine's memory is pushed per handle: the
 * page cache is the kernel's to manage, and a file larger than that is
 * better read again from the store than made to evict everything else.
 * keep= streams are not pushed (their old bytes are meant to go), nor
 * streams that failed.
 *
 * Locks: push_lock is a leaf, and no lock is held across a notification:
 * the thread is joined (push_stop(), from fs_shutdown()) before the unmount
 * closes the device. At SCHED_IDLE this thread may wait long for the CPU,
 * so what it holds is held briefly: the stream's lock inside
 * stream_peek()/stream_take_sent(), push_lock for its list.
 */
#include "fs_int.h"

#include "log.h"
#include "xpthread.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PUSH_CHUNK (1u << 20)
#define PUSH_RAM_SHARE 4 /* at most 1/4 of RAM per file */
#define PUSH_POLL_MS 500 /* how often adopted handles of running streams are looked at */
#define PUSH_LIVE_MS 20  /* ... and those pushed as they go */
#define PUSH_NICE 19     /* where SCHED_IDLE is refused */

static uint64_t ram_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page <= 0)
		return 1ull << 30;
	return (uint64_t)pages * (uint64_t)page;
}

/* Store @n bytes of @h's stream at @off in the page cache, through @buf:
 * false if they are not there (evicted since): skipped, never guessed.
 * No lock around the notification: this thread is joined (push_stop)
 * before the unmount closes the device. An ENOENT from the kernel (it
 * dropped the inode, and with it any use for these pages) is ignored. */
static bool store_piece(struct fs *fs, struct handle *h, char *buf, size_t n, uint64_t off)
{
	if (stream_peek(h->s, buf, n, off) != 0)
		return false;
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
	bv.buf[0].mem = buf;
	fuse_lowlevel_notify_store(fs->se, h->n->ino, (off_t)off, &bv, 0);
	return true;
}

/* Push the noted ranges of @h's stream of @length bytes, up to *@budget
 * bytes. @live: the stream still runs, and only the noted bytes below
 * @frontier (all there) are pushed; the rest stays noted for a later
 * round. Returns the bytes pushed. */
static uint64_t push_stream(struct fs *fs, struct handle *h, uint64_t length, char *buf,
                            uint64_t *budget, bool live, uint64_t frontier)
{
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	/* Whole pages only, while it runs: the rest of a page may not be
	 * there yet. */
	uint64_t below = !live ? UINT64_MAX : frontier >= length ? length : frontier / pg * pg;
	uint64_t off, len, pushed = 0;
	/* A complete stream's last page goes first: a stream of unknown
	 * length may still have a smaller size in the kernel (a direct_io
	 * read does not grow it), and a store past that size grows it. Were
	 * the first pages stored while the size was still short, a getattr
	 * answered meanwhile with the final size would change the kernel's
	 * size and drop them all again. Whether the reader read that page
	 * does not matter: every present byte is right. */
	if (!live && length > 0) {
		uint64_t last = (length - 1) / pg * pg;
		store_piece(fs, h, buf, (size_t)(length - last), last);
	}
	/* Live, the noted bytes go lowest first, as they arrive. Once the
	 * stream is complete they go highest first: a reader that opens the
	 * file again at once reads it from the start, through FUSE where
	 * pages are missing (reply_present() un-notes what those reads
	 * bring into the page cache), and meets this walk once, instead of
	 * both working on the same pages from the same end. */
	while (*budget && !atomic_load(&fs->push_stop) &&
	       (live ? stream_take_sent(h->s, below, &off, &len)
	             : stream_take_sent_last(h->s, PUSH_CHUNK, &off, &len))) {
		uint64_t a = off / pg * pg, b = (off + len + pg - 1) / pg * pg;
		if (b > length)
			b = length;
		for (uint64_t p = a; p < b && *budget && !atomic_load(&fs->push_stop);) {
			size_t n = b - p < PUSH_CHUNK ? (size_t)(b - p) : PUSH_CHUNK;
			if (n > *budget)
				n = (size_t)(*budget / pg * pg);
			if (!n)
				break;
			if (store_piece(fs, h, buf, n, p)) {
				*budget -= n;
				pushed += n;
			}
			p += n;
		}
	}
	return pushed;
}

/* Look at one adopted handle: true when it is done with (and freed).
 * *@live is set if its stream runs with a known length (pushed as it
 * goes: look again soon). */
static bool push_one(struct fs *fs, struct handle *h, char *buf, bool *live)
{
	struct stream_info in;
	stream_get_info(h->s, &in);
	if (in.state == STREAM_COMPLETE && !in.keep) {
		push_stream(fs, h, (uint64_t)in.length, buf, &h->push_budget, false, 0);
	} else if (in.state == STREAM_IDLE || in.state == STREAM_RUNNING) {
		if (in.keep)
			goto done;
		/* A known length is the file's size in the kernel already:
		 * pages stored now stay (a size change would drop them). */
		if (in.length >= 0 && push_stream(fs, h, (uint64_t)in.length, buf, &h->push_budget,
		                                  true, in.frontier))
			*live = true;
		return false; /* not yet */
	}
done:
	if (atomic_load(&fs->push_stop))
		return false; /* shutdown frees it (handles_free_all) */
	handle_free(fs, h);
	return true;
}

static void *push_main(void *arg)
{
	struct fs *fs = arg;
	pthread_setname_np(pthread_self(), "streamfs-push");
	/* Behind everything else: SCHED_IDLE runs it on what CPU time nobody
	 * else wants (while a stream arrives, that is the time between its
	 * bursts), so the reader it works for loses little; a reader
	 * reading again meanwhile is served either way. Never a lock
	 * holder for long (see the top of this file). */
	struct sched_param sp = {.sched_priority = 0};
	int e = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	if (e != 0 && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), PUSH_NICE) != 0)
		log_debug("push thread: no lower priority: %s", strerror(e));
	char *buf = malloc(PUSH_CHUNK);
	xpthread_mutex_lock(&fs->push_lock);
	while (!atomic_load(&fs->push_stop)) {
		if (!fs->push_jobs) {
			xpthread_cond_wait(&fs->push_cond, &fs->push_lock);
			continue;
		}
		struct handle *todo = fs->push_jobs, *keep = NULL;
		fs->push_jobs = NULL;
		fs->push_kick = false;
		xpthread_mutex_unlock(&fs->push_lock);
		bool live = false;
		while (todo) {
			struct handle *h = todo;
			todo = h->push_next;
			if (!buf || !push_one(fs, h, buf, &live)) {
				h->push_next = keep;
				keep = h;
			}
		}
		xpthread_mutex_lock(&fs->push_lock);
		if (!keep)
			continue;
		/* Some streams still run: look again later, or when a handle
		 * comes. */
		while (keep) {
			struct handle *h = keep;
			keep = h->push_next;
			h->push_next = fs->push_jobs;
			fs->push_jobs = h;
		}
		if (!buf)
			break;
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_nsec += (live ? PUSH_LIVE_MS : PUSH_POLL_MS) * 1000000L;
		t.tv_sec += t.tv_nsec / 1000000000L;
		t.tv_nsec %= 1000000000L;
		if (!atomic_load(&fs->push_stop) && !fs->push_kick)
			pthread_cond_timedwait(&fs->push_cond, &fs->push_lock, &t);
	}
	xpthread_mutex_unlock(&fs->push_lock);
	free(buf);
	return NULL;
}

void push_adopt(struct fs *fs, struct handle *h)
{
	xpthread_mutex_lock(&fs->push_lock);
	bool stop = atomic_load(&fs->push_stop);
	struct handle *same = NULL;
	for (struct handle *j = fs->push_jobs; j && !stop; j = j->push_next)
		if (j->s == h->s)
			same = j;
	if (!stop && !same && !fs->push_started) {
		if (pthread_create(&fs->push_thread, NULL, push_main, fs) == 0)
			fs->push_started = true;
		else
			log_error("cannot start the page-cache thread: %s", strerror(errno));
	}
	bool adopt = !stop && !same && fs->push_started;
	if (adopt) {
		h->push_budget = ram_bytes() / PUSH_RAM_SHARE;
		h->push_next = fs->push_jobs;
		fs->push_jobs = h;
	}
	/* Also when the stream has a handle here already: a reader done
	 * with it (most often at its end) is the moment to push what it was
	 * sent since the last round, before it or another opens the file
	 * again, not up to PUSH_LIVE_MS later. */
	if (adopt || same) {
		fs->push_kick = true;
		xpthread_cond_signal(&fs->push_cond);
	}
	xpthread_mutex_unlock(&fs->push_lock);
	/* One handle per stream is enough: the ranges are the stream's. */
	if (!adopt)
		handle_free(fs, h);
}

void push_stop(struct fs *fs)
{
	xpthread_mutex_lock(&fs->push_lock);
	atomic_store(&fs->push_stop, true);
	bool join = fs->push_started;
	fs->push_started = false;
	xpthread_cond_signal(&fs->push_cond);
	xpthread_mutex_unlock(&fs->push_lock);
	if (join)
		XPTHREAD_CHECK(pthread_join(fs->push_thread, NULL));
	/* The handles still adopted are on fs->handles: handles_free_all(). */
	fs->push_jobs = NULL;
}
