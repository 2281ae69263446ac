/*
 * test_store.c - unit tests for store.c: pwrite/pread round trips in RAM
 * and on disk, bytes far out (past 1 GiB) in a sparse store, fill_fd from
 * a pipe (data, EAGAIN, EOF), store errors told apart from pipe errors;
 * stores described by store_new() hold no descriptor until created, and
 * RAM stores take labels longer than memfd_create() does.
 *
 * A full store (ENOSPC) needs a mount: test_store_full.c.
 */
#include "fake_source.h"
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
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

/* Bytes on both sides of 1 GiB, nothing before them: read back, and the
 * store stays sparse. */
static void sparse_far_out(const char *dir)
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

static void test_sparse_far_out_disk(void)
{
	char *dir = t_tmpdir("store");
	sparse_far_out(dir);
	rmdir(dir);
	free(dir);
}

static void test_sparse_far_out_ram(void)
{
	sparse_far_out(NULL);
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
	RUN(test_sparse_far_out_disk);
	RUN(test_sparse_far_out_ram);
	RUN(test_fill_fd_ram);
	RUN(test_fill_fd_disk);
	RUN(test_error_helpers);
	RUN(test_created_lazily);
	RUN(test_long_memory_label);
	return t_finish("store");
}
