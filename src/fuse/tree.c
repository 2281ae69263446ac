/*
 * tree.c - the tree of nodes the mount shows: files (each with its stream)
 * and the directories their names make. See fs_int.h.
 *
 * The tree grows with "streamfs add" and shrinks with "streamfs rm" while
 * mounted, under fs->lock (a read-write lock: every request reads, only
 * add/rm/forget write). A removed node is marked and loses its stream at
 * once, but is freed only when nothing can name it any more: the kernel
 * has forgotten every lookup of it (FORGET) and no open handle points to
 * it. Until then a request on it finds it marked (ENOENT). Its inode
 * number is then reused with a new generation. A request's own node needs
 * no reference of ours: the kernel holds the inode (so sends no FORGET for
 * it) until the request is answered; handles count as opens.
 * Requests work on their own reference to the stream, taken under the lock.
 *
 * Lock order: fs->lock, then a stream's lock. No reply, notification or
 * stream callback runs under fs->lock.
 */
#include "fs_int.h"

#include "streamfs/stream.h"
#include "xpthread.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- nodes and their numbers ------------------------------------------ */

/* Room in the node table for one more number. The free list never needs
 * more room than there are numbers, so freeing a node cannot fail. */
static int reserve_ino(struct fs *fs)
{
	if (fs->freeino.len > 0)
		return 0;
	if (nodevec_reserve(&fs->nodes, 1) < 0)
		return -1;
	return inovec_reserve(&fs->freeino, fs->nodes.len + 1 - fs->freeino.len);
}

/* A new node @name (@len bytes) in @parent (NULL: none). Under fs->lock,
 * written. NULL without memory, and nothing changed but reserved room. */
static struct node *node_new(struct fs *fs, struct node *parent, const char *name, size_t len,
                             bool dir)
{
	if (reserve_ino(fs) < 0)
		return NULL;
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strndup(name, len))) {
		free(n);
		return NULL;
	}
	if (parent && nodevec_push(&parent->kids, n) < 0) {
		free(n->name);
		free(n);
		return NULL;
	}
	n->parent = parent;
	n->dir = dir;
	if (fs->freeino.len > 0) {
		n->ino = fs->freeino.ptr[--fs->freeino.len];
		n->gen = ++fs->reuses;
		assert(fs->nodes.ptr[n->ino] == NULL);
		fs->nodes.ptr[n->ino] = n;
	} else {
		n->ino = fs->nodes.len;
		int r = nodevec_push(&fs->nodes, n);
		assert(r == 0); /* reserved above */
		(void)r;
	}
	return n;
}

static void node_destroy(struct node *n)
{
	if (n->s)
		stream_unref(n->s);
	nodevec_free(&n->kids);
	free(n->name);
	free(n->source);
	free(n);
}

/* Free @n if it is removed and nothing names it any more (see the top of
 * this file). Under fs->lock, written. */
static void node_release(struct fs *fs, struct node *n)
{
	if (!n->removed || __atomic_load_n(&n->nlookup, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&n->nopen, __ATOMIC_RELAXED))
		return;
	assert(n->ino != FUSE_ROOT_ID && !n->parent && !n->s && n->kids.len == 0);
	assert(fs->freeino.len < fs->freeino.cap);
	fs->nodes.ptr[n->ino] = NULL;
	fs->freeino.ptr[fs->freeino.len++] = n->ino;
	passthrough_forget_node(fs, n);
	node_destroy(n);
}

/* The node of @ino, removed or not; NULL if none. Under fs->lock. */
static struct node *node_at(struct fs *fs, fuse_ino_t ino)
{
	return ino < fs->nodes.len ? fs->nodes.ptr[ino] : NULL;
}

static struct node *child(const struct node *dir, const char *name, size_t len)
{
	for (size_t i = 0; i < dir->kids.len; i++) {
		struct node *k = dir->kids.ptr[i];
		if (strlen(k->name) == len && memcmp(k->name, name, len) == 0)
			return k;
	}
	return NULL;
}

int tree_init(struct fs *fs)
{
	/* Inode 0 is invalid in FUSE; 1 is the root. */
	if (!node_new(fs, NULL, "", 0, true) || !node_new(fs, NULL, "", 0, true)) {
		errno = ENOMEM;
		return -1;
	}
	assert(fs->nodes.len == FUSE_ROOT_ID + 1);
	return 0;
}

void tree_free(struct fs *fs)
{
	for (size_t i = 0; i < fs->nodes.len; i++)
		if (fs->nodes.ptr[i])
			node_destroy(fs->nodes.ptr[i]);
	nodevec_free(&fs->nodes);
	inovec_free(&fs->freeino);
}

/* ---- requests --------------------------------------------------------- */

struct node *tree_get(struct fs *fs, fuse_ino_t ino, struct stream **s)
{
	xpthread_rwlock_rdlock(&fs->lock);
	struct node *n = node_at(fs, ino);
	if (n && n->removed)
		n = NULL;
	*s = n && n->s ? stream_ref(n->s) : NULL;
	xpthread_rwlock_unlock(&fs->lock);
	return n;
}

struct node *tree_get_open(struct fs *fs, fuse_ino_t ino, struct stream **s)
{
	xpthread_rwlock_rdlock(&fs->lock);
	struct node *n = node_at(fs, ino);
	*s = NULL;
	if (n && n->removed) {
		xpthread_mutex_lock(&fs->hlock);
		struct handle *h;
		TAILQ_FOREACH(h, &fs->handles, link)
		{
			if (h->n == n) {
				*s = stream_ref(h->s);
				break;
			}
		}
		xpthread_mutex_unlock(&fs->hlock);
	} else if (n) {
		*s = n->s ? stream_ref(n->s) : NULL;
	}
	if (n && n->removed && !*s)
		n = NULL;
	xpthread_rwlock_unlock(&fs->lock);
	return n;
}

struct node *tree_lookup(struct fs *fs, fuse_ino_t parent, const char *name, struct stream **s,
                         int *err)
{
	xpthread_rwlock_rdlock(&fs->lock);
	struct node *d = node_at(fs, parent);
	bool isdir = d && d->dir && !d->removed;
	struct node *n = isdir ? child(d, name, strlen(name)) : NULL;
	*s = n && n->s ? stream_ref(n->s) : NULL;
	if (n)
		__atomic_add_fetch(&n->nlookup, 1, __ATOMIC_RELAXED);
	xpthread_rwlock_unlock(&fs->lock);
	*err = isdir || !d ? ENOENT : ENOTDIR;
	return n;
}

void tree_forget(struct fs *fs, const struct fuse_forget_data *forgets, size_t count)
{
	xpthread_rwlock_wrlock(&fs->lock);
	for (size_t i = 0; i < count; i++) {
		struct node *n = node_at(fs, forgets[i].ino);
		if (!n || forgets[i].ino == FUSE_ROOT_ID)
			continue;
		uint64_t have = __atomic_load_n(&n->nlookup, __ATOMIC_RELAXED);
		uint64_t drop = forgets[i].nlookup;
		__atomic_store_n(&n->nlookup, drop < have ? have - drop : 0, __ATOMIC_RELAXED);
		node_release(fs, n);
	}
	xpthread_rwlock_unlock(&fs->lock);
}

/* Entry @i of directory @d (".", "..", then the children) and its name. */
static const struct node *dir_entry(const struct node *d, size_t i, const char **name)
{
	if (i == 0) {
		*name = ".";
		return d;
	}
	if (i == 1) {
		*name = "..";
		return d->parent ? d->parent : d;
	}
	*name = d->kids.ptr[i - 2]->name;
	return d->kids.ptr[i - 2];
}

int tree_list(struct fs *fs, fuse_ino_t ino, off_t off, tree_list_fn fn, void *arg)
{
	xpthread_rwlock_rdlock(&fs->lock);
	const struct node *d = node_at(fs, ino);
	if (!d || !d->dir || d->removed) {
		xpthread_rwlock_unlock(&fs->lock);
		return -ENOTDIR;
	}
	for (size_t i = (size_t)off; i < d->kids.len + 2; i++) {
		const char *name;
		const struct node *n = dir_entry(d, i, &name);
		if (!fn(arg, name, n->ino, n->dir, (off_t)(i + 1)))
			break;
	}
	xpthread_rwlock_unlock(&fs->lock);
	return 0;
}

struct stream **tree_streams(struct fs *fs, int only)
{
	xpthread_rwlock_rdlock(&fs->lock);
	struct stream **v = calloc(fs->nodes.len + 1, sizeof(*v));
	size_t k = 0;
	for (size_t i = 0; v && i < fs->nodes.len; i++) {
		const struct node *n = fs->nodes.ptr[i];
		if (n && n->s && (only < 0 || (int)n->start == only))
			v[k++] = stream_ref(n->s);
	}
	xpthread_rwlock_unlock(&fs->lock);
	return v;
}

struct stream **fs_streams(struct fs *fs)
{
	return tree_streams(fs, -1);
}

void fs_streams_free(struct stream **v)
{
	for (size_t i = 0; v && v[i]; i++)
		stream_unref(v[i]);
	free(v);
}

void fs_start_mount_streams(struct fs *fs)
{
	/* Starting hands work to the I/O thread: not under the tree lock. */
	struct stream **v = tree_streams(fs, START_MOUNT);
	for (size_t i = 0; v && v[i]; i++)
		stream_start(v[i]);
	fs_streams_free(v);
}

/* ---- open handles ----------------------------------------------------- */

struct handle *handle_new(struct fs *fs, struct node *n, struct stream *s)
{
	struct handle *h = req_alloc(sizeof(*h));
	if (!h)
		return NULL;
	h->n = n;
	h->s = stream_ref(s);
	__atomic_add_fetch(&n->nopen, 1, __ATOMIC_RELAXED);
	xpthread_mutex_lock(&fs->hlock);
	TAILQ_INSERT_HEAD(&fs->handles, h, link);
	xpthread_mutex_unlock(&fs->hlock);
	return h;
}

void handle_free(struct fs *fs, struct handle *h)
{
	xpthread_mutex_lock(&fs->hlock);
	TAILQ_REMOVE(&fs->handles, h, link);
	xpthread_mutex_unlock(&fs->hlock);
	stream_unref(h->s);
	xpthread_rwlock_wrlock(&fs->lock);
	unsigned was = __atomic_fetch_sub(&h->n->nopen, 1, __ATOMIC_RELAXED);
	assert(was > 0);
	(void)was;
	node_release(fs, h->n);
	xpthread_rwlock_unlock(&fs->lock);
	free(h);
}

void handles_free_all(struct fs *fs)
{
	struct handle *h;
	while ((h = TAILQ_FIRST(&fs->handles))) {
		TAILQ_REMOVE(&fs->handles, h, link);
		stream_unref(h->s);
		free(h);
	}
}

/* ---- paths ------------------------------------------------------------ */

/* One component of a validated path: @len bytes at @name; @rest is what
 * follows its slash, NULL after the last one. */
struct component {
	const char *name;
	size_t len;
	const char *rest;
};

static struct component component_at(const char *p)
{
	const char *slash = strchr(p, '/');
	return (struct component){.name = p,
	                          .len = slash ? (size_t)(slash - p) : strlen(p),
	                          .rest = slash ? slash + 1 : NULL};
}

/*
 * The directory that is to hold @path's last component (returned in
 * *@last), made as needed. *@changed: the highest directory that gained
 * an entry. Under fs->lock, written. NULL with @err set.
 */
static struct node *make_dirs(struct fs *fs, const char *path, struct component *last,
                              fuse_ino_t *changed, char *err, size_t errlen)
{
	struct node *dir = fs->nodes.ptr[FUSE_ROOT_ID];
	bool made = false;
	for (struct component c = component_at(path);; c = component_at(c.rest)) {
		if (!made)
			*changed = dir->ino;
		if (!c.rest) {
			*last = c;
			return dir;
		}
		struct node *k = child(dir, c.name, c.len);
		if (k && !k->dir) {
			snprintf(err, errlen, "'%.*s' is both a file and a directory",
			         (int)(c.rest - 1 - path), path);
			return NULL;
		}
		if (!k) {
			k = node_new(fs, dir, c.name, c.len, true);
			if (!k) {
				snprintf(err, errlen, "out of memory");
				return NULL;
			}
			made = true;
		}
		dir = k;
	}
}

/* The node at @path, or NULL. Under fs->lock. */
static struct node *find_path(struct fs *fs, const char *path)
{
	struct node *n = fs->nodes.ptr[FUSE_ROOT_ID];
	for (struct component c = component_at(path); n; c = component_at(c.rest)) {
		n = n->dir ? child(n, c.name, c.len) : NULL;
		if (!c.rest)
			break;
	}
	return n;
}

/* ---- add and remove --------------------------------------------------- */

int fs_add_file(struct fs *fs, const char *path, struct stream *s, const struct file_opts *opts,
                const char *source, char *err, size_t errlen)
{
	fuse_ino_t changed = FUSE_ROOT_ID;
	struct component last;
	xpthread_rwlock_wrlock(&fs->lock);
	if (atomic_load(&fs->shut)) {
		snprintf(err, errlen, "the file system is being unmounted");
		goto fail;
	}
	struct node *dir = make_dirs(fs, path, &last, &changed, err, errlen);
	if (!dir)
		goto fail;
	if (child(dir, last.name, last.len)) {
		snprintf(err, errlen, "duplicate name '%s'", path);
		goto fail;
	}
	/* Copied first: a file node never lacks its stream or source. */
	char *src = strdup(source);
	struct node *n = src ? node_new(fs, dir, last.name, last.len, false) : NULL;
	if (!n) {
		free(src);
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	n->source = src;
	n->s = s;
	n->size = opts->size;
	n->read = opts->read;
	n->start = opts->start;
	xpthread_rwlock_unlock(&fs->lock);
	/* Directory listings are cached (cache_readdir): drop the stale one. */
	session_inval_dir(fs, changed);
	return 0;
fail:
	xpthread_rwlock_unlock(&fs->lock);
	stream_unref(s);
	return -1;
}

static void gone_free(struct gone *v, size_t k)
{
	for (size_t i = 0; i < k; i++)
		free(v[i].name);
	free(v);
}

/* The file @n and the directories that only lead to it, deepest first,
 * with copies of their names. Under fs->lock. Returns their number, or 0
 * when out of memory. */
static size_t chain_of(struct node *n, struct gone **out)
{
	size_t k = 1;
	for (struct node *x = n->parent; x->ino != FUSE_ROOT_ID && x->kids.len == 1; x = x->parent)
		k++;
	struct gone *v = calloc(k, sizeof(*v));
	if (!v)
		return 0;
	struct node *x = n;
	for (size_t i = 0; i < k; i++, x = x->parent) {
		v[i] = (struct gone){.parent = x->parent->ino, .ino = x->ino};
		if (!(v[i].name = strdup(x->name))) {
			gone_free(v, i);
			return 0;
		}
	}
	*out = v;
	return k;
}

/* Unlink the @k nodes from @n up (chain_of()), and free those the kernel
 * never looked up (or has forgotten already). Under fs->lock, written. */
static void unlink_chain(struct fs *fs, struct node *n, size_t k)
{
	for (size_t i = 0; i < k; i++) {
		struct node *d = n->parent;
		for (size_t j = 0; j < d->kids.len; j++) {
			if (d->kids.ptr[j] == n) {
				d->kids.ptr[j] = d->kids.ptr[--d->kids.len];
				break;
			}
		}
		n->removed = true;
		n->parent = NULL;
		node_release(fs, n);
		n = d;
	}
}

int fs_remove(struct fs *fs, const char *path, char *err, size_t errlen)
{
	xpthread_rwlock_wrlock(&fs->lock);
	struct node *n = find_path(fs, path);
	struct gone *v = NULL;
	size_t k = n && !n->dir ? chain_of(n, &v) : 0;
	if (!k) {
		xpthread_rwlock_unlock(&fs->lock);
		if (n && !n->dir)
			snprintf(err, errlen, "out of memory");
		else
			snprintf(err, errlen, n ? "'%s' is a directory" : "no file named '%s'",
			         path);
		return -1;
	}
	struct stream *s = n->s;
	n->s = NULL;
	unlink_chain(fs, n, k);
	xpthread_rwlock_unlock(&fs->lock);

	stream_cancel(s, "removed"); /* parked readers get EIO */
	stream_unref(s);             /* open handles keep theirs */
	session_notify_gone(fs, v, k);
	gone_free(v, k);
	return 0;
}
