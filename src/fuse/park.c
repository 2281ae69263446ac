/*
 * park.c - requests that wait for a stream: parked on it as a struct
 * pending and answered by the thread that brings what they wait for. See
 * fs_int.h.
 *
 * Reads, opens and stats that must wait are parked, never slept on: FUSE
 * workers stay free, so hundreds of waiting readers cannot starve ls or
 * stat.
 *
 * Who answers a pending: exactly one of
 *  - park() itself, when stream_wait() answers at once;
 *  - pending_done(), the stream's done() callback (the bytes came, the
 *    stream ended, failed or was cancelled), or the reply thread it hands
 *    a read with bytes to (replier.c), which then owns it;
 *  - pending_interrupt(), libfuse's interrupt callback (Ctrl-C, SIGKILL,
 *    timeout), which answers EINTR;
 *  - park_wake_all() (fs_shutdown), which answers EIO.
 * stream_unwait() settles the races between them: it gives a parked
 * waiter back to exactly one caller, and to none once done() has been or
 * is being called. An interrupt that comes before stream_wait() is seen
 * by stream_wait() as -EINTR, so the interrupt callback is armed before
 * parking. The party that answers first disarms that callback (which
 * waits for one that is running: it has found through stream_unwait that
 * the pending is not its own) and only then replies. p->answered checks
 * that one party, and only one, claims each pending.
 *
 * A pending is on fs->parked from park() until its reply has been sent;
 * only then does it leave the list (under fs->plock) and is freed. So
 * whatever is on the list under fs->plock is alive, and once the list is
 * empty after park_wake_all() no reply can be on its way: fs_shutdown()
 * may close the device.
 *
 * Replies are sent from memory (pread into a per-thread buffer), never as
 * fd buffers, which libfuse 3.14 turns into an mmap per request.
 */
#include "fs_int.h"

#include "log.h"
#include "streamfs/stream.h"
#include "xpthread.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int reply_errno(ssize_t r)
{
	/* EFBIG: past what the store can hold; ENODATA: dropped by keep= */
	if (r == -EINTR || r == -EFBIG || r == -ENODATA)
		return (int)-r;
	return EIO; /* cancelled (unmount, rm) reads see EIO */
}

/* ---- replies ---------------------------------------------------------- */

/*
 * Reply buffers, one per thread that replies (FUSE workers, the I/O
 * thread). Replies are copied out of the store with pread rather than
 * served from a mapping: measured faster here (2.4 vs 1.4 GB/s) and the
 * daemon's RSS stays flat instead of growing with every byte served.
 */
static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
#define REPLY_BUF (1u << 20) /* the largest FUSE read request */

static void buf_key_init(void)
{
	xpthread_key_create(&buf_key, free);
}

/* The calling thread's reply buffer, made at its first use; NULL if out
 * of memory. */
static char *thread_buf(void)
{
	xpthread_once(&buf_once, buf_key_init);
	char *buf = pthread_getspecific(buf_key);
	if (!buf && (buf = req_alloc(REPLY_BUF)) && pthread_setspecific(buf_key, buf) != 0) {
		free(buf);
		buf = NULL;
	}
	return buf;
}

/*
 * The pages of the reply thread's first replies, touched when it starts
 * (while the read that started it waits) rather than in a reply: the
 * first REPLY_WARM bytes, what cat's and dd's 128 KiB reads use. Not all
 * of REPLY_BUF: a page's first touch costs 1.6-2.4 us on this machine
 * type, and 256 of them took longer than a range request on a fresh
 * mount, whose reply then waited (dd of 4 KiB at 768 MiB on a fresh
 * mount, median of 21: 6.1 ms warming 1 MiB, 5.5 warming 128 KiB).
 */
#define REPLY_WARM (128u << 10)

void reply_buf_warm(void)
{
	char *buf = thread_buf();
	if (buf)
		memset(buf, 0, REPLY_WARM);
}

int reply_present(fuse_req_t req, struct stream *s, uint64_t off, size_t len, bool push)
{
	bool own = len > REPLY_BUF;
	char *buf = own ? req_alloc(len) : thread_buf();
	if (!buf)
		return -ENOMEM;
	/* Noted with the copy, before the reply: once replied, the reader
	 * may close the file, and its release may free the handle's
	 * reference on @s. A direct_io reply leaves nothing in the page
	 * cache: push.c stores these bytes there later. Any other reply is
	 * kept there by the kernel: push.c need not store them again. */
	int r = stream_copy_reply(s, buf, len, off, !push);
	if (r == 0)
		fuse_reply_buf(req, buf, len);
	if (own)
		free(buf);
	return r;
}

static void do_park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s,
                    enum pending_op op, enum stream_wait_kind kind, uint64_t off, size_t len,
                    const struct fuse_file_info *fi, bool push);

static void reply_read(struct pending *p, ssize_t r)
{
	fuse_req_t req = p->req;
	struct stream *s = p->s;
	uint64_t off = p->w.off;
	if (r < 0) {
		fuse_reply_err(req, reply_errno(r));
		return;
	}
	if (r == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	int e = reply_present(req, s, off, (size_t)r, p->push);
	if (e == -ERANGE) {
		/* Evicted between the wake-up and this copy: wait again (the
		 * stream fetches it again). */
		do_park(req, p->fs, p->n, s, P_READ, p->w.kind, off, p->w.len, NULL, p->push);
	} else if (e == -ENOMEM) {
		fuse_reply_err(req, ENOMEM);
	} else if (e < 0) {
		log_error("%s: read of present bytes at %" PRIu64 " failed: %s", stream_name(s),
		          off, strerror(-e));
		fuse_reply_err(req, EIO);
	}
}

static void reply_open(struct pending *p, ssize_t r)
{
	if (r < 0) {
		fuse_reply_err(p->req, reply_errno(r));
		return;
	}
	struct handle *h = handle_new(p->fs, p->n, p->s);
	if (!h) {
		fuse_reply_err(p->req, ENOMEM);
		return;
	}
	/* Incomplete streams are opened direct_io (reads reach us even past
	 * the current size; short replies are not zero-filled), and what is
	 * read through them is stored in the page cache once complete
	 * (push.c); every open keeps the cache: the next open of the complete
	 * file reads from there. */
	struct stream_info in;
	passthrough_open(p->fs, h, &in);
	h->length = in.length;
	p->fi.fh = (uintptr_t)h;
	bool complete = h->mode != H_DIRECT;
	p->fi.keep_cache = 1; /* nothing cached is ever wrong (push.c) */
	p->fi.direct_io = !complete;
	/* Where the kernel will read the complete stream from the store
	 * itself (passthrough.c), the FUSE file's page cache is never read:
	 * nothing to push. */
	h->push = !complete && !passthrough_expected(p->fs, &in);
	/* A known length is the kernel's size of the file already: what this
	 * reader is sent can be pushed while it reads, by a handle of the
	 * push thread's own (push.c), instead of only after its release.
	 * Made before the reply: once that is sent, a release may free h and
	 * with it the last hold on the node. */
	struct handle *ph = NULL;
	if (h->push && in.length >= 0 && !in.keep)
		ph = handle_new(p->fs, p->n, p->s);
	int sent = fuse_reply_open(p->req, &p->fi);
	passthrough_sent();
	if (sent < 0) {
		/* the opener is gone (interrupted): no release will come */
		passthrough_release(p->fs, h);
		handle_free(p->fs, h);
		if (ph)
			handle_free(p->fs, ph);
		return;
	}
	if (ph)
		push_adopt(p->fs, ph);
}

/*
 * Under --size-unknown=wait a stat first waits for a size worth showing;
 * if that came without an announced length (a command's first bytes, a
 * URL without Content-Length), it goes on waiting, for the end: the size
 * it shows must be final, or sendfile() copies stop at it (see fs.c).
 */
static bool wait_on_for_end(const struct pending *p, ssize_t r)
{
	if (r != 0 || p->n->size != SIZE_WAIT_UNKNOWN || p->w.kind != STREAM_WAIT_SIZE)
		return false;
	struct stream_info in;
	stream_get_info(p->s, &in);
	return in.length < 0 && (in.state == STREAM_IDLE || in.state == STREAM_RUNNING);
}

static void reply_getattr(struct pending *p, ssize_t r)
{
	/* The request moves to a new pending; @p is released as usual. */
	if (wait_on_for_end(p, r)) {
		park(p->req, p->fs, p->n, p->s, P_GETATTR, STREAM_WAIT_END, 0, 0, NULL);
		return;
	}
	/* A stat of a failed stream still works; one woken by unmount or rm
	 * (cancelled) fails like every other waiter, and so does a GETATTR
	 * with a file handle (lseek(SEEK_END)) on a failed stream. */
	if (r == -EINTR || r == -ECANCELED || (p->with_fh && r < 0))
		fuse_reply_err(p->req, reply_errno(r));
	else
		reply_attr(p->req, p->fs, p->n, p->s);
}

/* ---- the life of a pending -------------------------------------------- */

/* The caller is the one party that answers @p (see the top of this file). */
static void claim(struct pending *p)
{
	bool was = atomic_exchange(&p->answered, true);
	assert(!was && "a parked request answered twice");
	(void)was;
}

/* @p has been answered: off fs->parked (if @listed: park_wake_all()
 * takes its own off first) and freed. */
static void release(struct pending *p, bool listed)
{
	struct fs *fs = p->fs;
	if (listed) {
		xpthread_mutex_lock(&fs->plock);
		TAILQ_REMOVE(&fs->parked, p, link);
		if (TAILQ_EMPTY(&fs->parked))
			xpthread_cond_broadcast(&fs->drained);
		xpthread_mutex_unlock(&fs->plock);
	}
	stream_unref(p->s);
	free(p);
}

/* Answer @p, ours alone, with result @r, and release it. No stream lock
 * and no lock of ours is held. */
static void answer(struct pending *p, ssize_t r, bool listed)
{
	claim(p);
	/* Disarm the interrupt callback first: this waits for one that is
	 * running, which has found (through stream_unwait) that @p is not its
	 * own. */
	fuse_req_interrupt_func(p->req, NULL, NULL);
	switch (p->op) {
	case P_READ:
		reply_read(p, r);
		break;
	case P_OPEN:
		reply_open(p, r);
		break;
	case P_GETATTR:
		reply_getattr(p, r);
		break;
	}
	release(p, listed);
}

/* Woken by the stream: the reply of a read with bytes goes to the reply
 * thread where it may (replier.c), so that the thread that wrote them goes
 * on receiving. */
static void pending_done(struct stream_waiter *w, ssize_t r)
{
	struct pending *p = w->data;
	if (p->op == P_READ && r > 0 && replier_take(p->fs, p, r))
		return;
	answer(p, r, true);
}

void pending_answer(struct pending *p, ssize_t r)
{
	answer(p, r, true);
}

/* Runs under the request's lock: must not disarm itself. */
static void pending_interrupt(fuse_req_t req, void *data)
{
	struct pending *p = data;
	assert(p->req == req);
	if (!stream_unwait(p->s, &p->w))
		return; /* being answered, or not parked yet (stream_wait says EINTR) */
	claim(p);
	fuse_reply_err(req, EINTR);
	release(p, true);
}

static void do_park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s,
                    enum pending_op op, enum stream_wait_kind kind, uint64_t off, size_t len,
                    const struct fuse_file_info *fi, bool push)
{
	assert(s && !n->dir);
	struct pending *p = req_alloc(sizeof(*p));
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	stream_waiter_init(&p->w);
	p->w.kind = kind;
	p->w.off = off;
	p->w.len = len;
	p->w.done = pending_done;
	p->w.data = p;
	p->req = req;
	p->fs = fs;
	p->n = n;
	p->s = stream_ref(s);
	p->op = op;
	p->with_fh = fi != NULL;
	p->push = push;
	if (fi)
		p->fi = *fi;
	atomic_init(&p->answered, false);
	/* Checked under the lock park_wake_all() takes after setting it: a
	 * request is either on the list it walks or refused here. */
	xpthread_mutex_lock(&fs->plock);
	bool refused = atomic_load(&fs->shut);
	if (!refused)
		TAILQ_INSERT_TAIL(&fs->parked, p, link);
	xpthread_mutex_unlock(&fs->plock);
	if (refused) {
		fuse_reply_err(req, EIO);
		stream_unref(p->s);
		free(p);
		return;
	}
	/* Armed before parking: an interrupt that comes in between is seen by
	 * stream_wait() as -EINTR instead of being lost. */
	fuse_req_interrupt_func(req, pending_interrupt, p);
	/* Asked before: once parked, @p (and its reference on @s) may be
	 * answered and freed at any moment. */
	bool start = op == P_READ && replier_wanted(fs, s);
	ssize_t r = stream_wait(s, &p->w);
	if (r != STREAM_PARKED)
		answer(p, r, true);
	else if (start)
		replier_start(fs);
	/* Parked: @p may be answered and freed already. */
}

void park(fuse_req_t req, struct fs *fs, struct node *n, struct stream *s, enum pending_op op,
          enum stream_wait_kind kind, uint64_t off, size_t len, const struct fuse_file_info *fi)
{
	do_park(req, fs, n, s, op, kind, off, len, fi, false);
}

void park_read(fuse_req_t req, struct fs *fs, struct handle *h, enum stream_wait_kind kind,
               uint64_t off, size_t len)
{
	do_park(req, fs, h->n, h->s, P_READ, kind, off, len, NULL, h->push);
}

size_t park_wake_all(struct fs *fs)
{
	assert(atomic_load(&fs->shut));
	struct pending_list mine = TAILQ_HEAD_INITIALIZER(mine);
	xpthread_mutex_lock(&fs->plock);
	struct pending *p, *next;
	for (p = TAILQ_FIRST(&fs->parked); p; p = next) {
		next = TAILQ_NEXT(p, link);
		/* Those not given back are being answered, or are not parked
		 * yet (stream_wait() will say EINTR): waited for below. */
		if (stream_unwait(p->s, &p->w)) {
			TAILQ_REMOVE(&fs->parked, p, link);
			TAILQ_INSERT_TAIL(&mine, p, link);
		}
	}
	xpthread_mutex_unlock(&fs->plock);
	size_t k = 0;
	while ((p = TAILQ_FIRST(&mine))) {
		TAILQ_REMOVE(&mine, p, link);
		answer(p, -ECANCELED, false); /* as if the stream were cancelled: EIO */
		k++;
	}
	/* Until the replies of the others have been sent. Each is on its way
	 * (a reply does not wait for anything), so this wait is short. */
	xpthread_mutex_lock(&fs->plock);
	while (!TAILQ_EMPTY(&fs->parked))
		xpthread_cond_wait(&fs->drained, &fs->plock);
	xpthread_mutex_unlock(&fs->plock);
	return k;
}
