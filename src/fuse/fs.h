/*
 * fs.h - the FUSE layer: a read-only tree of streams on the libfuse3
 * low-level API. It only translates: every decision about bytes is the
 * stream's. Reads that must wait are parked on the stream and answered by
 * whoever fills the data; no FUSE worker thread ever sleeps on data.
 */
#ifndef STREAMFS_FS_H
#define STREAMFS_FS_H

#include "config.h"
#include "streamfs/stream.h"

#include <stdbool.h>
#include <stddef.h>

struct fs;

/* An empty tree. Returns NULL with errno set. */
struct fs *fs_new(void);

/*
 * Add a file at @path (a validated name; parent directories are made as
 * needed), before or after mounting. Takes the caller's reference on @s
 * in every case. @opts is copied (size, read and start policies are used
 * here). Returns 0, or -1 with @err set ("'a/b' is both a file and a
 * directory", duplicate names, "the file system is being unmounted").
 */
int fs_add_file(struct fs *fs, const char *path, struct stream *s, const struct file_opts *opts,
                const char *source, char *err, size_t errlen);

/*
 * Remove the file at @path while mounted: it disappears from the tree, its
 * stream is cancelled (waiting readers get EIO; open handles keep what is
 * present), and directories left empty go too. Returns 0, or -1 with @err.
 */
int fs_remove(struct fs *fs, const char *path, char *err, size_t errlen);

struct cache;
/* The store budget, shown on the root (user.streamfs.cache_*). */
void fs_set_cache(struct fs *fs, struct cache *ca);

/* The control socket's name, shown on the root as user.streamfs.control. */
void fs_set_control_name(struct fs *fs, const char *name);

/* Create the FUSE session and mount it at @mountpoint with the default
 * options (ro, auto_unmount) plus @fuse_opts (each a -o argument).
 * Returns 0, or -1 with @err set. */
int fs_mount(struct fs *fs, const char *mountpoint, char *const *fuse_opts, char *err,
             size_t errlen);

/* Start every stream whose policy is start=mount. */
void fs_start_mount_streams(struct fs *fs);

/* Serve requests until unmounted or SIGINT/SIGTERM/SIGHUP. Returns 0 or
 * the loop's error. */
int fs_loop(struct fs *fs);

/*
 * The FUSE side of stopping: no file is added from now on, every parked
 * request is answered with EIO, and the mount goes. Call it once the loop
 * has returned (or was never run). The streams keep running: stopping
 * them and their sources is the caller's (fs_streams(), then
 * sources_shutdown()). Idempotent.
 */
void fs_shutdown(struct fs *fs);

/* References on the stream of every file, for walking them without the
 * tree's lock: a malloc'ed NULL-terminated array, or NULL without memory.
 * Free it with fs_streams_free() (NULL is fine). */
struct stream **fs_streams(struct fs *fs);
void fs_streams_free(struct stream **v);

/* Free everything. No source may still hold a stream of the tree's
 * (fs_shutdown(), then sources_shutdown()), and the I/O loop must be
 * stopped: every parked request has been answered. */
void fs_free(struct fs *fs);

#endif
