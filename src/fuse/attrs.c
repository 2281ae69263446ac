/*
 * attrs.c - status as extended attributes: user.streamfs.* on each file
 * (state, bytes, size, source, kind, error, error_offset, waiters, and
 * what the source adds) and on the root (pid, version, control). See
 * fs_int.h.
 *
 * Reading one never starts a stream or waits: getfattr and streamfs
 * status see the stream as it is. listxattr names only the attributes
 * that have a value now (no error before a failure).
 */
#include "fs_int.h"
#include "streamfs/cache.h"

#include "streamfs/stream.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XATTR_PREFIX "user.streamfs."

/*
 * Values longer than this are cut: the kernel carries at most
 * XATTR_SIZE_MAX bytes, and getxattr had better show their start than
 * fail with E2BIG (a command can be 60 KB).
 */
#define XATTR_VALUE_MAX 65536

static const char *const file_keys[] = {
    "state",   "bytes",        "size",    "source",      "kind",
    "error",   "error_offset", "waiters", "held",        "evicted",
    "dropped", "keep",         "paused",  "passthrough", NULL};

void fs_set_cache(struct fs *fs, struct cache *ca)
{
	fs->cache = ca;
	/* Bounded only under --cache-size (not cache_get_stats(): that asks
	 * the file system for its free space under the budget's lock). */
	fs->cache_bounded = ca && cache_window_max(ca) != UINT64_MAX;
}

void fs_set_control_name(struct fs *fs, const char *name)
{
	snprintf(fs->control, sizeof(fs->control), "%s", name);
}

/* The value of file attribute @key into @buf; its length, or -ENODATA. */
static ssize_t file_xattr(struct fs *fs, const struct node *n, struct stream *s, const char *key,
                          char *buf, size_t size)
{
	struct stream_info in;
	stream_get_info(s, &in);
	bool failed = in.state == STREAM_FAILED || in.state == STREAM_CANCELLED;
	if (strcmp(key, "state") == 0)
		return snprintf(buf, size, "%s", stream_state_name(in.state));
	if (strcmp(key, "bytes") == 0)
		return snprintf(buf, size, "%" PRIu64, in.bytes);
	if (strcmp(key, "size") == 0)
		return in.length >= 0 ? snprintf(buf, size, "%" PRId64, in.length) : -ENODATA;
	if (strcmp(key, "source") == 0)
		return snprintf(buf, size, "%s", n->source);
	if (strcmp(key, "kind") == 0)
		return snprintf(buf, size, "%s", stream_kind(s));
	if (strcmp(key, "error") == 0)
		return failed ? snprintf(buf, size, "%s", in.error_msg) : -ENODATA;
	if (strcmp(key, "error_offset") == 0)
		return failed ? snprintf(buf, size, "%" PRIu64, in.error_offset) : -ENODATA;
	if (strcmp(key, "waiters") == 0) /* parked reads, opens and stats */
		return snprintf(buf, size, "%u", in.waiters);
	if (strcmp(key, "held") == 0) /* bytes in the store now */
		return snprintf(buf, size, "%" PRIu64, in.held);
	if (strcmp(key, "evicted") == 0)
		return in.evicted ? snprintf(buf, size, "%" PRIu64, in.evicted) : -ENODATA;
	if (strcmp(key, "dropped") == 0)
		return in.keep ? snprintf(buf, size, "%" PRIu64, in.dropped) : -ENODATA;
	if (strcmp(key, "keep") == 0)
		return in.keep ? snprintf(buf, size, "%" PRIu64, in.keep) : -ENODATA;
	if (strcmp(key, "paused") == 0)
		return in.paused ? snprintf(buf, size, "%s", cache_pause_text(in.paused))
		                 : -ENODATA;
	if (strcmp(key, "passthrough") == 0) { /* files open reading the store directly */
		unsigned k = passthrough_count(fs, n);
		return k ? snprintf(buf, size, "%u", k) : -ENODATA;
	}
	return stream_get_attr(s, key, buf, size);
}

/* The store budget's attributes of the root (cache_*). */
static ssize_t cache_xattr(struct fs *fs, const char *key, char *buf, size_t size)
{
	struct cache_stats st;
	if (!fs->cache)
		return -ENODATA;
	cache_get_stats(fs->cache, &st);
	if (strcmp(key, "cache_size") == 0)
		return st.limit ? snprintf(buf, size, "%" PRIu64, st.limit) : -ENODATA;
	if (strcmp(key, "cache_used") == 0)
		return snprintf(buf, size, "%" PRIu64, st.used);
	if (strcmp(key, "cache_min_free") == 0)
		return snprintf(buf, size, "%" PRIu64, st.min_free);
	if (strcmp(key, "cache_evictions") == 0)
		return snprintf(buf, size, "%" PRIu64, st.evictions);
	if (strcmp(key, "cache_paused") == 0)
		return snprintf(buf, size, "%u", st.paused);
	return -ENODATA;
}

static ssize_t root_xattr(struct fs *fs, const char *key, char *buf, size_t size)
{
	if (strncmp(key, "cache_", 6) == 0)
		return cache_xattr(fs, key, buf, size);
	if (strcmp(key, "pid") == 0)
		return snprintf(buf, size, "%d", (int)getpid());
	if (strcmp(key, "control") == 0 && fs->control[0])
		return snprintf(buf, size, "%s", fs->control);
	if (strcmp(key, "version") == 0)
		return snprintf(buf, size, "%s", STREAMFS_VERSION);
	if (strcmp(key, "passthrough") == 0) /* the kernel reads complete streams from the store */
		return snprintf(buf, size, "%s", atomic_load(&fs->passthrough) ? "on" : "off");
	return -ENODATA;
}

/*
 * The value of @key of @n, malloc'ed in *@out; its length (at most
 * XATTR_VALUE_MAX) or -errno. Sized from the value's real length, asked
 * again if it grew in between (stderr).
 */
static ssize_t xattr_value(struct fs *fs, const struct node *n, struct stream *s, const char *key,
                           char **out)
{
	size_t cap = 256;
	for (;;) {
		char *buf = req_alloc(cap);
		if (!buf)
			return -ENOMEM;
		ssize_t len =
		    n->dir ? root_xattr(fs, key, buf, cap) : file_xattr(fs, n, s, key, buf, cap);
		if (len >= 0 && (size_t)len >= cap) {
			free(buf);
			cap = (size_t)len + 1;
			continue;
		}
		if (len < 0) {
			free(buf);
			return len;
		}
		*out = buf;
		return len > XATTR_VALUE_MAX ? XATTR_VALUE_MAX : len;
	}
}

void attrs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = req_node(req, fs, ino, &s);
	if (!n)
		return;
	/* Of the directories, only the root has attributes. */
	if (strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX)) != 0 ||
	    (n->dir && ino != FUSE_ROOT_ID)) {
		if (s)
			stream_unref(s);
		fuse_reply_err(req, ENODATA);
		return;
	}
	char *buf = NULL;
	ssize_t len = xattr_value(fs, n, s, name + strlen(XATTR_PREFIX), &buf);
	if (s)
		stream_unref(s);
	if (len < 0)
		fuse_reply_err(req, (int)-len);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else if ((size_t)len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, (size_t)len);
	free(buf);
}

/* The names listxattr returns, each NUL-terminated; those that do not fit
 * are left out. */
struct namebuf {
	char buf[2048];
	size_t len;
};

static void add_name(const char *key, void *arg)
{
	struct namebuf *nb = arg;
	int n = snprintf(nb->buf + nb->len, sizeof(nb->buf) - nb->len, XATTR_PREFIX "%s", key);
	if (n > 0 && nb->len + (size_t)n + 1 <= sizeof(nb->buf))
		nb->len += (size_t)n + 1; /* keep the NUL as separator */
}

void attrs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct fs *fs = fuse_req_userdata(req);
	struct stream *s;
	struct node *n = req_node(req, fs, ino, &s);
	if (!n)
		return;
	struct namebuf nb = {.len = 0};
	char tmp[8];
	if (ino == FUSE_ROOT_ID) {
		add_name("pid", &nb);
		add_name("version", &nb);
		add_name("passthrough", &nb);
		if (fs->control[0])
			add_name("control", &nb);
		static const char *const ck[] = {"cache_size",     "cache_used",
		                                 "cache_min_free", "cache_evictions",
		                                 "cache_paused",   NULL};
		for (int i = 0; ck[i]; i++)
			if (cache_xattr(fs, ck[i], tmp, sizeof(tmp)) >= 0)
				add_name(ck[i], &nb);
	} else if (s) {
		for (int i = 0; file_keys[i]; i++)
			if (file_xattr(fs, n, s, file_keys[i], tmp, sizeof(tmp)) >= 0)
				add_name(file_keys[i], &nb);
		stream_list_attrs(s, add_name, &nb);
		stream_unref(s);
	}
	if (size == 0)
		fuse_reply_xattr(req, nb.len);
	else if (nb.len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, nb.buf, nb.len);
}
