/*
 * test_store.c - unit tests for store.c: pwrite/map round trips in RAM and
 * on disk, a read across the 1 GiB mapping-window boundary of a sparse
 * store, fill_fd from a pipe (data, EAGAIN, EOF), and store errors
 * (ENOSPC) told apart from pipe errors, directly and through a stream;
 * stores described by store_new() hold no descriptor until created, and
 * RAM stores take labels longer than memfd_create() does.
 *
 * The ENOSPC cases use a 1 MiB tmpfs mounted under a mkdtemp() directory.
 * It is lazily unmounted (MNT_DETACH) as soon as the stores are open, so
 * nothing stays mounted even if the test dies; without permission to mount
 * those sub-cases are skipped and say so.
 */
#include "fake_source.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define GIB (1ULL << 30)

static struct store *open_or_die(const char *dir)
{
	struct store *st = store_open(dir, "t");
	if (!st) {
		perror("store_open");
		abort();
	}
	return st;
}

static void round_trip(const char *dir)
{
	struct store *st = open_or_die(dir);
	CHECK(store_fd(st) >= 0);
	size_t n = 300 * 1024 + 7;
	unsigned char *buf = malloc(n);
	pat_fill(buf, 0, n);
	CHECK_EQ(store_pwrite(st, buf, n, 0), 0);

	unsigned char *got = malloc(n);
	CHECK_EQ(store_pread(st, got, n, 0), 0);
	CHECK(pat_ok(got, 0, n));
	CHECK_EQ(store_pread(st, got, 10, 1234), 0);
	CHECK(pat_ok(got, 1234, 10));
	CHECK_EQ(store_pread(st, got, 0, 0), 0);

	/* A later write leaves earlier bytes as they were. */
	CHECK_EQ(store_pwrite(st, buf, 100, n), 0);
	CHECK_EQ(store_pread(st, got, 10, 1234), 0);
	CHECK(pat_ok(got, 1234, 10));
	/* Reading past what was written is an error, not zeros. */
	CHECK_EQ(store_pread(st, got, 10, n + 95), -EIO);
	free(got);
	free(buf);
	store_close(st);
	store_close(NULL);
}

static void test_round_trip_ram(void)
{
	round_trip(NULL);
}

static void test_round_trip_disk(void)
{
	char *dir = t_tmpdir("store");
	round_trip(dir);
	CHECK_EQ(rmdir(dir), 0); /* the store left no file behind */
	free(dir);
}

static void window_boundary(const char *dir)
{
	struct store *st = open_or_die(dir);
	unsigned char buf[16];
	pat_fill(buf, GIB - 8, sizeof(buf));
	CHECK_EQ(store_pwrite(st, buf, sizeof(buf), GIB - 8), 0);

	unsigned char got[16];
	CHECK_EQ(store_pread(st, got, 16, GIB - 8), 0);
	CHECK(pat_ok(got, GIB - 8, 16));
	CHECK_EQ(store_pread(st, got, 8, GIB), 0);
	CHECK(pat_ok(got, GIB, 8));

	struct stat sb;
	CHECK_EQ(fstat(store_fd(st), &sb), 0);
	CHECK_EQ(sb.st_size, GIB + 8);
	CHECK(sb.st_blocks * 512 < 1024 * 1024); /* sparse */
	store_close(st);
}

static void test_window_boundary_disk(void)
{
	char *dir = t_tmpdir("store");
	window_boundary(dir);
	rmdir(dir);
	free(dir);
}

static void test_window_boundary_ram(void)
{
	window_boundary(NULL);
}

static void fill_fd(const char *dir)
{
	struct store *st = open_or_die(dir);
	int p[2];
	CHECK_EQ(pipe2(p, O_NONBLOCK), 0); /* as the daemon's pipes are */

	/* Nothing in the pipe yet: EAGAIN, a pipe condition, not the store's. */
	ssize_t r = store_fill_fd(st, p[0], 4096, 0);
	CHECK_EQ(r, -EAGAIN);
	CHECK(!store_error_is_store(r));

	unsigned char buf[5000];
	pat_fill(buf, 500, sizeof(buf));
	CHECK_EQ(write(p[1], buf, sizeof(buf)), (ssize_t)sizeof(buf));
	uint64_t off = 500;
	while (off < 500 + sizeof(buf)) {
		r = store_fill_fd(st, p[0], 3000, off);
		CHECK(r > 0 && r <= 3000);
		if (r <= 0)
			break;
		off += (uint64_t)r;
	}
	CHECK_EQ(off, 500 + sizeof(buf));
	unsigned char got[sizeof(buf)];
	CHECK_EQ(store_pread(st, got, sizeof(got), 500), 0);
	CHECK(pat_ok(got, 500, sizeof(got)));

	CHECK_EQ(store_fill_fd(st, p[0], 100, off), -EAGAIN);
	close(p[1]);
	CHECK_EQ(store_fill_fd(st, p[0], 100, off), 0); /* EOF */
	close(p[0]);
	store_close(st);
}

static void test_fill_fd_ram(void)
{
	fill_fd(NULL);
}

static void test_fill_fd_disk(void)
{
	char *dir = t_tmpdir("store");
	fill_fd(dir);
	rmdir(dir);
	free(dir);
}

static void test_error_helpers(void)
{
	CHECK(!store_error_is_store(-EAGAIN));
	CHECK(!store_error_is_store(-EIO));
	CHECK_EQ(store_error_errno(-EIO), EIO);
	CHECK(store_error_is_store(-(STORE_ERR_BIAS + ENOSPC)));
	CHECK_EQ(store_error_errno(-(STORE_ERR_BIAS + ENOSPC)), ENOSPC);
}

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
		printf("store: SKIP test_store_full: cannot mount a tmpfs (%s)\n", strerror(errno));
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
	s = stream_new("full-splice", c, &fake_ops, &f);
	CHECK_EQ(stream_start(s), 0);
	CHECK_EQ(pipe(p), 0);
	CHECK_EQ(fcntl(p[1], F_SETFL, O_NONBLOCK), 0);
	ssize_t sr = 0;
	uint64_t spliced = 0;
	for (int i = 0; i < 1000 && sr >= 0; i++) {
		if (write(p[1], buf, sizeof(buf)) < 0 && errno != EAGAIN)
			break;
		sr = stream_fill_fd(s, p[0], sizeof(buf));
		if (sr > 0)
			spliced += (uint64_t)sr;
		if (sr == -EAGAIN)
			sr = 0;
	}
	CHECK_EQ(sr, -ENOSPC);
	CHECK(spliced > 0);
	stream_get_info(s, &info);
	CHECK_EQ(info.state, STREAM_FAILED);
	CHECK_EQ(info.error, ENOSPC);
	CHECK_EQ(info.error_offset, spliced);
	close(p[0]);
	close(p[1]);
	stream_unref(s);
	fake_fini(&f);
}

/* store_new(): nothing exists until store_create(), which is idempotent
 * and reports why it failed. */
static void test_created_lazily(void)
{
	char *dir = t_tmpdir("store");
	struct store *st = store_new(dir, "lazy");
	CHECK(st != NULL);
	CHECK_EQ(store_fd(st), -1);
	CHECK(strcmp(store_where(st), dir) == 0);
	CHECK_EQ(store_create(st), 0);
	int fd = store_fd(st);
	CHECK(fd >= 0);
	CHECK_EQ(store_create(st), 0);
	CHECK_EQ(store_fd(st), fd);
	unsigned char b[4] = {1, 2, 3, 4}, got[4];
	CHECK_EQ(store_pwrite(st, b, 4, 10), 0);
	CHECK_EQ(store_pread(st, got, 4, 10), 0);
	CHECK(memcmp(b, got, 4) == 0);
	store_close(st);
	store_close(store_new(dir, "never created")); /* nothing to close but memory */

	st = store_new(dir, "gone");
	CHECK_EQ(rmdir(dir), 0);
	CHECK_EQ(store_create(st), -ENOENT);
	CHECK_EQ(store_fd(st), -1);
	store_close(st);
	CHECK(store_open(dir, "gone") == NULL);
	CHECK_EQ(errno, ENOENT);
	free(dir);

	st = store_new(NULL, "ram");
	CHECK(strcmp(store_where(st), "memory") == 0);
	CHECK_EQ(store_fd(st), -1);
	CHECK_EQ(store_create(st), 0);
	CHECK(store_fd(st) >= 0);
	store_close(st);
}

/* A name of 255 bytes (a file name's limit) is more than memfd_create()
 * takes (249): the label is cut, at a UTF-8 boundary. */
static void test_long_memory_label(void)
{
	char label[256];
	memset(label, 'n', 255);
	label[255] = '\0';
	/* A two-byte character across the 249-byte cut. */
	label[248] = (char)0xc3;
	label[249] = (char)0xa9;
	struct store *st = store_open(NULL, label);
	CHECK(st != NULL);
	if (!st)
		return;
	char link[64], target[512];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", store_fd(st));
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	CHECK(n > 0);
	if (n > 0) {
		target[n] = '\0';
		/* "/memfd:" + 248 'n' + " (deleted)": the cut character is dropped whole. */
		CHECK(strncmp(target, "/memfd:", 7) == 0);
		CHECK(strspn(target + 7, "n") == 248);
		CHECK(strcmp(target + 7 + 248, " (deleted)") == 0);
	}
	store_close(st);
}

int main(void)
{
	t_init();
	RUN(test_round_trip_ram);
	RUN(test_round_trip_disk);
	RUN(test_window_boundary_disk);
	RUN(test_window_boundary_ram);
	RUN(test_fill_fd_ram);
	RUN(test_fill_fd_disk);
	RUN(test_error_helpers);
	RUN(test_store_full);
	RUN(test_created_lazily);
	RUN(test_long_memory_label);
	return t_finish("store");
}
