/*
 * push.c - storing what direct_io readers were sent into the kernel's page
 * cache, once their stream is complete, so that the next open of the file
 * is served by the kernel alone.
 *
 * A file is opened direct_io while its stream runs (fs.c says why), and a
 * direct_io read leaves nothing in the page cache: without this, the second
 * read of a complete file would come through FUSE again. Replies note the
 * ranges they sent (stream_note_sent(), a rangeset add); when such a handle
 * is released, this thread adopts it and, once the stream is complete,
 * copies the noted ranges from the store into the page cache with
 * FUSE_NOTIFY_STORE, whole pages from the start of the first to the end of
 * the last (the last page of the file ends at its size).
 *
 * Why after completion, and in a thread of its own, rather than from the
 * reply itself (which the first version did, with the reply's buffer): the
 * store into the page cache (page allocation, LRU insertion, a copy) is as
 * dear as the reply, and done in the reply path it halved the first read
 * on a fast source (measured: 369 vs 925 MiB/s for 1 GiB from nginx).
 * Here it runs at a lower priority when the reader is done. Also simpler:
 * once complete, every byte of the stream is there (or was evicted, and is
 * then skipped), so whole pages come from the store and none has to be
 * assembled from a reply and the store. The bytes of a stream never change
 * (a changed source fails it), so a page stored once stays right.
 *
 * The adopted handle keeps the node (and so its inode number, which is
 * reused only after the node is freed) and the stream alive until the push
 * is done: a page is never stored under a number that names another file.
 * At most PUSH_RAM_SHARE of the machine's memory is pushed per file: the
 * page cache is the kernel's to manage, and a file larger than that is
 * better read again from the store than made to evict everything else.
 * keep= streams are not pushed (their old bytes are meant to go), nor
 * streams that failed.
 *
 * Locks: push_lock is a leaf except that fs->mount_lock is taken without it
 * (held across each notification, as for every notification).
 */
#include "fs_int.h"

#include "log.h"
#include "xpthread.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PUSH_CHUNK (1u << 20)
#define PUSH_RAM_SHARE 4 /* at most 1/4 of RAM per file */
#define PUSH_POLL_MS 500 /* how often adopted handles of running streams are looked at */
#define PUSH_NICE 10

static uint64_t ram_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page <= 0)
		return 1ull << 30;
	return (uint64_t)pages * (uint64_t)page;
}

/* Push the noted ranges of @h's complete stream of @length bytes, up to
 * *@budget bytes. */
static void push_stream(struct fs *fs, struct handle *h, uint64_t length, char *buf,
                        uint64_t *budget)
{
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t off, len;
	while (*budget && !atomic_load(&fs->push_stop) && stream_take_sent(h->s, &off, &len)) {
		uint64_t a = off / pg * pg, b = (off + len + pg - 1) / pg * pg;
		if (b > length)
			b = length;
		for (uint64_t p = a; p < b && *budget && !atomic_load(&fs->push_stop);) {
			size_t n = b - p < PUSH_CHUNK ? (size_t)(b - p) : PUSH_CHUNK;
			if (n > *budget)
				n = (size_t)(*budget / pg * pg);
			if (!n)
				break;
			/* Not there (evicted since): skipped, never guessed. */
			if (stream_peek(h->s, buf, n, p) == 0) {
				struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
				bv.buf[0].mem = buf;
				xpthread_mutex_lock(&fs->mount_lock);
				if (fs->mounted)
					/* ENOENT: the kernel dropped the inode, and with it
					 * any use for these pages. */
					fuse_lowlevel_notify_store(fs->se, h->n->ino, (off_t)p, &bv,
					                           0);
				xpthread_mutex_unlock(&fs->mount_lock);
				*budget -= n;
			}
			p += n;
		}
	}
}

/* Look at one adopted handle: true when it is done with (and freed). */
static bool push_one(struct fs *fs, struct handle *h, char *buf)
{
	struct stream_info in;
	stream_get_info(h->s, &in);
	if (in.state == STREAM_COMPLETE && !in.keep) {
		uint64_t budget = ram_bytes() / PUSH_RAM_SHARE;
		push_stream(fs, h, (uint64_t)in.length, buf, &budget);
	} else if (in.state == STREAM_IDLE || in.state == STREAM_RUNNING) {
		if (!in.keep)
			return false; /* not yet */
	}
	if (atomic_load(&fs->push_stop))
		return false; /* shutdown frees it (handles_free_all) */
	handle_free(fs, h);
	return true;
}

static void *push_main(void *arg)
{
	struct fs *fs = arg;
	/* Behind readers: a reader reading again now is served either way. */
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), PUSH_NICE) != 0)
		log_debug("push thread: setpriority: %s", strerror(errno));
	char *buf = malloc(PUSH_CHUNK);
	xpthread_mutex_lock(&fs->push_lock);
	while (!atomic_load(&fs->push_stop)) {
		if (!fs->push_jobs) {
			xpthread_cond_wait(&fs->push_cond, &fs->push_lock);
			continue;
		}
		struct handle *todo = fs->push_jobs, *keep = NULL;
		fs->push_jobs = NULL;
		xpthread_mutex_unlock(&fs->push_lock);
		while (todo) {
			struct handle *h = todo;
			todo = h->push_next;
			if (!buf || !push_one(fs, h, buf)) {
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
		t.tv_nsec += PUSH_POLL_MS * 1000000L;
		t.tv_sec += t.tv_nsec / 1000000000L;
		t.tv_nsec %= 1000000000L;
		if (!atomic_load(&fs->push_stop))
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
		h->push_next = fs->push_jobs;
		fs->push_jobs = h;
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
