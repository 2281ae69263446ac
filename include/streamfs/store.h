/*
 * store.h - where a stream's bytes live: one file descriptor.
 *
 * A store is either a memfd (RAM) or an unlinked file in a cache directory
 * (disk; the kernel's page cache then decides what stays in memory, so the
 * daemon's RSS stays flat however large the stream). The store is sparse:
 * bytes may be written at any offset, and holes cost nothing. It does not
 * know which bytes are present; the stream keeps that map.
 *
 * Reads copy out with store_pread() (pread into the caller's buffer) rather
 * than through a mapping: measured faster here, and the daemon's RSS does
 * not grow with the bytes it serves.
 *
 * Threads: store_pread() may be called from any thread; writes are expected
 * from one producer at a time per offset (the stream serialises them).
 */
#ifndef STREAMFS_STORE_H
#define STREAMFS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct store;

/*
 * Describe an empty store without creating it: in @dir (an unlinked file;
 * O_TMPFILE where the file system supports it), or in RAM when @dir is
 * NULL. @label names a RAM store in /proc/PID/fd (cut to the 249 bytes
 * memfd_create() takes). No file and no descriptor exist until
 * store_create(): a stream creates its store when it starts, so a mount of
 * thousands of idle files holds no descriptor for them. Returns NULL with
 * errno set (ENOMEM).
 */
struct store *store_new(const char *dir, const char *label);

/* A store in the named file @path (created 0600 if missing, kept when
 * closed, its bytes kept where they are): the persistent cache's data
 * file (persist.h). Nothing is opened until store_create(). Returns NULL
 * with errno set (ENOMEM). */
struct store *store_new_file(const char *path);

/* Create the store's file now (idempotent). Returns 0 or -errno (-EMFILE,
 * -ENOENT for a directory that is gone, ...). */
int store_create(struct store *st);

/* store_new() and store_create() in one. Returns NULL with errno set. */
struct store *store_open(const char *dir, const char *label);

/* Where the store lives, for messages: its directory, or "memory". */
const char *store_where(const struct store *st);

/* Close. Can't fail; NULL is fine. */
void store_close(struct store *st);

/* Write all of @buf at @off. Returns 0 or -errno (-ENOSPC, -EIO, ...). */
int store_pwrite(struct store *st, const void *buf, size_t len, uint64_t off);

/*
 * Move up to @len bytes (at most 1 MiB) from the descriptor @fd to @off,
 * through a per-thread buffer (faster than splice into ext4, see store.c).
 * Returns bytes moved, 0 at EOF, -EAGAIN if @fd (O_NONBLOCK; a blocking
 * @fd waits) has nothing now, or -errno. When the store is out of space
 * (ENOSPC, EDQUOT) the bytes read are kept and written first by the next
 * call at the same @off (which then reads nothing new): nothing is lost.
 * Errors of the store itself come back as -(STORE_ERR_BIAS + errno) so the caller can tell them
 * from errors of @fd; use store_error_is_store() / store_error_errno().
 */
ssize_t store_fill_fd(struct store *st, int fd, size_t len, uint64_t off);
#define STORE_ERR_BIAS 4096
static inline int store_error_is_store(ssize_t r)
{
	return r <= -STORE_ERR_BIAS;
}
static inline int store_error_errno(ssize_t r)
{
	return r <= -STORE_ERR_BIAS ? (int)(-r - STORE_ERR_BIAS) : (int)-r;
}

/*
 * Allocate [off, off+len) on disk (fallocate, size unchanged), so writes
 * there cannot fail for lack of space. Returns 0, or -ENOSPC / -EDQUOT /
 * -errno. On file systems without fallocate it returns 0 and does nothing.
 */
int store_alloc(struct store *st, uint64_t off, uint64_t len);

/* Give [off, off+len) back to the file system (a hole reads as zeros;
 * the stream's map says it is gone). Returns 0 or -errno. */
int store_punch(struct store *st, uint64_t off, uint64_t len);

/* Copy [off, off+len) (which must have been written) into @buf with
 * pread. Returns 0 or -errno. */
int store_pread(struct store *st, void *buf, size_t len, uint64_t off);

/* The descriptor, for diagnostics; -1 before store_create(). */
int store_fd(const struct store *st);

#endif
