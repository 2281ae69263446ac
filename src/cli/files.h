/*
 * files.h - turn a file_spec into a stream and a tree entry: at mount
 * time for each file of the command line and the manifest, and while
 * mounted for "streamfs add" and "streamfs rm" (the control socket).
 *
 * This is where the command line's per-file options become what the
 * engine and the sources take (struct url_opts, a fixed length, the
 * tree's policies): the engine knows nothing of struct file_opts.
 */
#ifndef STREAMFS_FILES_H
#define STREAMFS_FILES_H

#include "config.h"
#include "streamfs/ioloop.h"

#include <stdbool.h>
#include <stddef.h>

#define DEFAULT_CACHE_DIR "/var/tmp"

struct fs;

/* What every file of one mount shares. */
struct files_env {
	const struct config *cfg;
	struct ioloop *loop;
	struct fs *fs;
	struct cache *cache;     /* the store budget every stream is accounted in */
	struct persist *persist; /* --persist: the cache URL streams keep, or NULL */
	const char *cwd;         /* where relative pipe: paths start */
	const char *mnt;         /* the mount point, canonical */
};

/* The directory the stores go into; NULL: memory. */
const char *files_store_dir(const struct config *cfg);

/*
 * Refuse a pipe: path that leads into the mount (@mnt, canonical): the
 * daemon would open its own files and wait on itself. With @resolve,
 * symlinks are followed (before mounting); without, by name only (add, on
 * the loop thread, must not touch the file system). Returns 0 or -1 with
 * @err set.
 */
int files_check_pipe_path(const struct file_spec *f, const char *cwd, const char *mnt, bool resolve,
                          char *err, size_t errlen);

/*
 * Make @f's stream (its store is created when it starts) and add it to
 * the tree as f->name, shown with its source (a URL without its
 * credentials). @stdin_fd is the saved standard input for a "-" source,
 * which takes it in every case. With @mounted, a start=mount stream
 * starts at once (else fs_start_mount_streams() starts it). Returns 0, or
 * -1 with @err set.
 */
int files_add(const struct files_env *env, const struct file_spec *f, int stdin_fd, bool mounted,
              char *err, size_t errlen);

/* The control socket's add and rm (struct control_ops), with @ctx a
 * struct files_env. Loop thread. */
int files_live_add(void *ctx, const char *spec, char *const *opts, size_t nopts, char *err,
                   size_t errlen);
int files_live_rm(void *ctx, const char *name, char *err, size_t errlen);

#endif
