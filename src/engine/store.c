/*
 * store.c - see store.h.
 */
#include "streamfs/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h> /* memfd_create */
#include <sys/stat.h>
#include <unistd.h>

struct store {
	int fd;         /* -1 until store_create() */
	int err;        /* a failed fill lost bytes: every later fill fails (filler only) */
	char *dir;      /* NULL: RAM (or a named file, @path) */
	char *path;     /* a named file that outlives us (the persistent cache), or NULL */
	char *label;    /* RAM only */
	bool no_falloc; /* the file system has no fallocate(): allocate by writing */
	/* Bytes a fill read but could not write (ENOSPC, EDQUOT): written
	 * first by the next fill, so a full disk never loses a byte. */
	char *carry;
	size_t carry_len;
	uint64_t carry_off;
};

/* memfd_create() refuses names over NAME_MAX - strlen("memfd:") bytes. */
#define MEMFD_NAME_MAX 249

static int open_in_dir(const char *dir)
{
	int fd = open(dir, O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd;
	/* File systems without O_TMPFILE: create and unlink at once. */
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/streamfs.XXXXXX", dir) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path);
	return fd;
}

/* A memfd named @label, cut to what the kernel takes, at a UTF-8 boundary
 * (the name is only shown in /proc/PID/fd). */
static int open_in_memory(const char *label)
{
	char name[MEMFD_NAME_MAX + 1];
	size_t n = strlen(label);
	if (n > MEMFD_NAME_MAX) {
		n = MEMFD_NAME_MAX;
		while (n > 0 && ((unsigned char)label[n] & 0xc0) == 0x80)
			n--;
	}
	memcpy(name, label, n);
	name[n] = '\0';
	return memfd_create(name, MFD_CLOEXEC);
}

struct store *store_new(const char *dir, const char *label)
{
	struct store *st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	st->fd = -1;
	if (dir ? !(st->dir = strdup(dir)) : !(st->label = strdup(label ? label : "streamfs"))) {
		free(st);
		errno = ENOMEM;
		return NULL;
	}
	return st;
}

struct store *store_new_file(const char *path)
{
	struct store *st = calloc(1, sizeof(*st));
	if (!st || !(st->path = strdup(path))) {
		free(st);
		errno = ENOMEM;
		return NULL;
	}
	st->fd = -1;
	return st;
}

int store_create(struct store *st)
{
	if (st->fd >= 0)
		return 0;
	st->fd = st->path  ? open(st->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)
	         : st->dir ? open_in_dir(st->dir)
	                   : open_in_memory(st->label);
	return st->fd >= 0 ? 0 : -errno;
}

struct store *store_open(const char *dir, const char *label)
{
	struct store *st = store_new(dir, label);
	if (!st)
		return NULL;
	int r = store_create(st);
	if (r < 0) {
		store_close(st);
		errno = -r;
		return NULL;
	}
	return st;
}

const char *store_where(const struct store *st)
{
	return st->path ? st->path : st->dir ? st->dir : "memory";
}

void store_close(struct store *st)
{
	if (!st)
		return;
	if (st->fd >= 0)
		close(st->fd);
	free(st->dir);
	free(st->path);
	free(st->label);
	free(st->carry);
	free(st);
}

int store_alloc(struct store *st, uint64_t off, uint64_t len)
{
	if (st->no_falloc)
		return 0;
	if (st->fd < 0)
		return -EBADF;
	for (;;) {
		if (fallocate(st->fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EOPNOTSUPP) {
			/* Accounting still holds; a write may then meet ENOSPC,
			 * which pauses the stream instead of failing it. */
			st->no_falloc = true;
			return 0;
		}
		return -errno;
	}
}

int store_punch(struct store *st, uint64_t off, uint64_t len)
{
	if (st->fd < 0)
		return 0; /* never created: nothing to give back */
	while (fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
	                 (off_t)len) < 0) {
		if (errno == EINTR)
			continue;
		return -errno;
	}
	return 0;
}

static bool out_of_space(int e)
{
	return e == ENOSPC || e == EDQUOT;
}

/* Keep what a fill could not write, for the next one. */
static ssize_t keep_carry(struct store *st, const char *p, size_t n, uint64_t off, int e)
{
	char *c = malloc(n);
	if (!c) {
		st->err = e;
		return -(STORE_ERR_BIAS + e);
	}
	memcpy(c, p, n);
	free(st->carry);
	st->carry = c;
	st->carry_len = n;
	st->carry_off = off;
	return -(STORE_ERR_BIAS + e);
}

/* Write the carried bytes at @off. Returns bytes written (all of them),
 * or a store error (they stay carried). */
static ssize_t flush_carry(struct store *st, uint64_t off)
{
	if (st->carry_off != off) {
		st->err = EIO; /* the caller moved on: bytes would be lost */
		return -(STORE_ERR_BIAS + EIO);
	}
	size_t done = 0;
	while (done < st->carry_len) {
		ssize_t w =
		    pwrite(st->fd, st->carry + done, st->carry_len - done, (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			if (done) {
				memmove(st->carry, st->carry + done, st->carry_len - done);
				st->carry_len -= done;
				st->carry_off += done;
				return (ssize_t)done;
			}
			if (!out_of_space(e))
				st->err = e;
			return -(STORE_ERR_BIAS + e);
		}
		done += (size_t)w;
	}
	free(st->carry);
	st->carry = NULL;
	st->carry_len = 0;
	return (ssize_t)done;
}

int store_fd(const struct store *st)
{
	return st->fd;
}

int store_pwrite(struct store *st, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(st->fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int store_pread(struct store *st, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(st->fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO; /* a hole the map said was written */
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/*
 * Copy buffers, one per thread that fills stores (in the daemon, only the
 * I/O thread). read()+pwrite() through a buffer measured faster than
 * splice() into the store: 4.5 GB/s against 0.8-3.6 GB/s into an ext4
 * O_TMPFILE (splice writes page by page), and no slower into tmpfs.
 * 128 KiB, not more: on this kernel (6.18) a pwrite() of 256 KiB or more
 * into ext4 costs far more system time per byte than smaller ones, and
 * unevenly (0.2 s per GiB in 64-128 KiB writes, 0.3-2.6 s in 0.5-1 MiB
 * ones, measured with a fresh file per run); with 1 MiB reads a cmd:cat
 * first read took 0.9-3.0 CPU seconds per GiB in the daemon, 0.87-0.92
 * with 128 KiB.
 */
#define COPY_BUF (128u << 10)
static pthread_key_t copy_key;
static pthread_once_t copy_once = PTHREAD_ONCE_INIT;

static void copy_key_init(void)
{
	pthread_key_create(&copy_key, free);
}

ssize_t store_fill_fd(struct store *st, int fd, size_t len, uint64_t off)
{
	pthread_once(&copy_once, copy_key_init);
	char *buf = pthread_getspecific(copy_key);
	if (!buf) {
		buf = malloc(COPY_BUF);
		if (!buf)
			return -(STORE_ERR_BIAS + ENOMEM);
		if (pthread_setspecific(copy_key, buf) != 0) {
			free(buf);
			return -(STORE_ERR_BIAS + ENOMEM);
		}
	}
	if (st->err)
		return -(STORE_ERR_BIAS + st->err);
	if (st->carry_len)
		return flush_carry(st, off);
	ssize_t n;
	do
		n = read(fd, buf, len < COPY_BUF ? len : COPY_BUF);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? -EAGAIN : -errno;
	if (n == 0)
		return 0;
	/* Report what reached the store, to the byte. Out of space, the rest
	 * is carried to the next fill (the stream pauses meanwhile); any
	 * other error loses it, so the error sticks and every later fill
	 * reports it (the stream fails exactly there). */
	size_t done = 0;
	while (done < (size_t)n) {
		ssize_t w = pwrite(st->fd, buf + done, (size_t)n - done, (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			if (out_of_space(e)) {
				ssize_t r =
				    keep_carry(st, buf + done, (size_t)n - done, off + done, e);
				return done ? (ssize_t)done : r;
			}
			st->err = e;
			return done ? (ssize_t)done : -(STORE_ERR_BIAS + st->err);
		}
		done += (size_t)w;
	}
	return n;
}
