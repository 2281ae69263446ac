/*
 * test_store_full.c - a full store: the write that does not fit fails with
 * a store error (ENOSPC), told apart from a pipe error in fill_fd, and a
 * stream fed through append or fill_fd fails at its frontier with the
 * store's errno and a message naming the store.
 *
 * The store lives on a 1 MiB tmpfs mounted under a mkdtemp() directory and
 * lazily unmounted (MNT_DETACH) as soon as the stores are open, so nothing
 * stays mounted even if the test dies. Mounting needs root (CAP_SYS_ADMIN):
 * without it the test skips and the program exits 77, which ctest reports
 * as skipped. It is a program of its own so that the skip hides nothing.
 */
#include "fake_source.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

/* Fill @st (on the 1 MiB tmpfs) until the store reports an error. */
static int fill_until_error(struct store *st, uint64_t *off)
{
	static unsigned char buf[64 * 1024];
	for (int i = 0; i < 64; i++) {
		int r = store_pwrite(st, buf, sizeof(buf), *off);
		if (r < 0)
			return r;
		*off += sizeof(buf);
	}
	return 0;
}

static void test_store_full(void)
{
	char *dir = t_tmpdir("tmpfs");
	if (mount("streamfs-test", dir, "tmpfs", 0, "size=1m") != 0) {
		t_skip("cannot mount a tmpfs (%s)", strerror(errno));
		rmdir(dir);
		free(dir);
		return;
	}
	struct store *a = store_open(dir, "a");
	struct store *b = store_open(dir, "b");
	struct store *c = store_open(dir, "c");
	/* From here the mount lives only as long as the stores' descriptors. */
	CHECK_EQ(umount2(dir, MNT_DETACH), 0);
	CHECK_EQ(rmdir(dir), 0);
	free(dir);
	CHECK(a && b && c);
	if (!a || !b || !c) {
		store_close(a);
		store_close(b);
		store_close(c);
		return;
	}

	/* A plain write error. */
	uint64_t off = 0;
	CHECK_EQ(fill_until_error(a, &off), -ENOSPC);

	/* fill_fd: the pipe is fine, the store is full: a store error. */
	int p[2];
	CHECK_EQ(pipe(p), 0);
	static unsigned char buf[32 * 1024];
	CHECK_EQ(write(p[1], buf, sizeof(buf)), (ssize_t)sizeof(buf));
	ssize_t r;
	do
		r = store_fill_fd(a, p[0], sizeof(buf), off);
	while (r > 0 && (off += (uint64_t)r, true));
	CHECK(store_error_is_store(r));
	CHECK_EQ(store_error_errno(r), ENOSPC);
	close(p[0]);
	close(p[1]);
	store_close(a); /* give its space back */

	/* Through a stream: the append fails with the store's error, and the
	 * stream is FAILED at its frontier with a message naming the store. */
	struct fake_src f;
	fake_init(&f);
	struct stream *s = stream_new("full", b, &fake_ops, &f);
	CHECK(s != NULL);
	CHECK_EQ(stream_start(s), 0);
	int ar = 0;
	uint64_t appended = 0;
	while (ar == 0) {
		ar = stream_append(s, buf, sizeof(buf));
		if (ar == 0)
			appended += sizeof(buf);
	}
	CHECK_EQ(ar, -ENOSPC);
	CHECK(appended > 0);
	struct stream_info info;
	stream_get_info(s, &info);
	CHECK_EQ(info.state, STREAM_FAILED);
	CHECK_EQ(info.error, ENOSPC);
	CHECK_EQ(info.error_offset, appended);
	CHECK(strstr(info.error_msg, "store") != NULL);
	CHECK_EQ(stream_read(s, buf, 10, appended, false), -EIO);
	stream_unref(s);
	CHECK_EQ(atomic_load(&f.destroys), 1);
	fake_fini(&f);

	/* stream_fill_fd: a store error fails the stream, reported as its errno. */
	fake_init(&f);
	s = stream_new("full-fill", c, &fake_ops, &f);
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(pipe(p), 0);
	CHECK_EQ(fcntl(p[1], F_SETFL, O_NONBLOCK), 0);
	ssize_t sr = 0;
	uint64_t filled = 0;
	for (int i = 0; i < 1000 && sr >= 0; i++) {
		if (write(p[1], buf, sizeof(buf)) < 0 && errno != EAGAIN)
			break;
		sr = stream_fill_fd(s, p[0], sizeof(buf));
		if (sr > 0)
			filled += (uint64_t)sr;
		if (sr == -EAGAIN)
			sr = 0;
	}
	CHECK_EQ(sr, -ENOSPC);
	CHECK(filled > 0);
	stream_get_info(s, &info);
	CHECK_EQ(info.state, STREAM_FAILED);
	CHECK_EQ(info.error, ENOSPC);
	CHECK_EQ(info.error_offset, filled);
	close(p[0]);
	close(p[1]);
	stream_unref(s);
	fake_fini(&f);
}

int main(void)
{
	t_init();
	RUN(test_store_full);
	return t_finish("store_full");
}
