/*
 * persist.c - the persistent cache: see include/streamfs/persist.h.
 *
 * On disk, in DIR:
 *   lock        flock()ed by the mount that uses DIR
 *   HEX.data    the bytes, at their offsets (sparse); the stream's store
 *   HEX.map     what HEX.data holds (format below)
 *   HEX.tmp     a map being written (deleted when found at open)
 * HEX is the 64 hex digits of the entry's key (persist_key()).
 *
 * HEX.map, little endian:
 *   0   8  magic "SFSPMAP1"
 *   8  32  the key (a map under another name is foreign: discarded)
 *   40  8  length of the resource (signed; always >= 0 when written)
 *   48  8  last used, Unix seconds (the LRU order across mounts)
 *   56  4  ETag length E     60  4  Last-Modified length L
 *   64  4  number of ranges N
 *   68  4  reserved (0)
 *   72  E  ETag, then L bytes of Last-Modified, then N x (start, end)
 *          as two 8-byte values, sorted, disjoint, within the length
 *   ..  4  CRC-32C of everything before it
 *
 * Crash ordering (why a map is never ahead of its data): the stream marks
 * a byte present only after it was written to the data file; a sync
 * copies the present ranges, then fdatasync()s the data file, then writes
 * the map to HEX.tmp, fsync()s it and renames it over HEX.map. So every
 * range a map names was on disk before the map. Evictions punch holes in
 * the data file: a sync that saw one between its copy and its
 * fdatasync() writes nothing (the next one tries again), and at load
 * every range is cut to what SEEK_DATA says the file holds, so a block
 * evicted after the map was written (a hole, or a block allocated again
 * and not yet written: unwritten extents read as holes too) is not
 * trusted. Discarding an entry deletes the map (and fsyncs DIR) before
 * the data file is truncated.
 */
#include "streamfs/persist.h"

#include "digest.h"
#include "log.h"
#include "stream_int.h"
#include "streamfs/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "SFSPMAP1"
#define HDR_LEN 72
#define ETAG_MAX 1024
#define LM_MAX 256
#define RANGES_MAX (1u << 22) /* 64 MiB of map: a damaged count, not a real map */
#define SYNC_MS 1000
#define HEX_LEN (2 * PERSIST_KEY_LEN)
#define LOCK_WAIT_MS 3000 /* for a mount that is shutting down (lock_dir()) */
#define LOCK_STEP_MS 50

struct persist_entry {
	struct persist *p;
	struct persist_entry *next; /* protected by p->lock */
	uint8_t key[PERSIST_KEY_LEN];
	char hex[HEX_LEN + 1];
	bool claimed; /* protected by p->lock */

	pthread_mutex_t lock;
	/* protected by lock */
	struct stream *s;       /* the stream (a reference), or NULL */
	struct rangeset cached; /* from disk, not adopted (yet) */
	int64_t length;
	char *etag, *lm;
	bool keep;          /* the resource has a validator and a length */
	bool checked;       /* the origin answered: adopted, discarded or new */
	bool on_disk;       /* HEX.map exists */
	bool said;          /* user.streamfs.persist says why the copy went */
	unsigned gen;       /* discards so far: a sync that began before writes nothing */
	uint64_t last_used; /* Unix seconds */
	uint64_t blocks;    /* what the map on disk holds, in blocks (LRU trim) */
	/* the sync thread's own */
	uint64_t synced_total, synced_tick;
	size_t synced_n;

	/* What the map on disk names (since the last map written, or loaded),
	 * and the lock every map write takes: taken before s->lock and lock. */
	pthread_mutex_t maplock;
	struct rangeset ondisk; /* protected by maplock */
};

struct persist {
	char *dir;
	int dirfd, lockfd;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* protected by lock */
	struct persist_entry *entries;
	bool stop;
	bool thread_started;
	pthread_t thread;
};

/* ---- small helpers ----------------------------------------------------- */

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void to_hex(const uint8_t *key, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < PERSIST_KEY_LEN; i++) {
		out[2 * i] = digits[key[i] >> 4];
		out[2 * i + 1] = digits[key[i] & 15];
	}
	out[HEX_LEN] = '\0';
}

static bool from_hex(const char *s, uint8_t *key)
{
	for (int i = 0; i < HEX_LEN; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (v < 0)
			return false;
		key[i / 2] = (uint8_t)(i % 2 ? key[i / 2] | v : v << 4);
	}
	return true;
}

static uint64_t blocks_of(const struct rangeset *rs)
{
	uint64_t n = 0, last = UINT64_MAX;
	for (size_t i = 0; i < rs->n; i++) {
		uint64_t a = rs->r[i].start / BLK, b = (rs->r[i].end - 1) / BLK;
		n += b - a + 1 - (a == last);
		last = b;
	}
	return n;
}

static void name_of(const struct persist_entry *e, const char *ext, char *out, size_t size)
{
	snprintf(out, size, "%s.%s", e->hex, ext);
}

static void fsync_dir(struct persist *p)
{
	if (fsync(p->dirfd) < 0)
		log_warn("persist: fsync %s: %s", p->dir, strerror(errno));
}

void persist_key(const char *const *parts, size_t n, uint8_t key[PERSIST_KEY_LEN])
{
	struct sha256 c;
	sha256_init(&c);
	sha256_update(&c, "streamfs persist 1", 19);
	for (size_t i = 0; i < n; i++) {
		uint8_t len[8];
		size_t l = parts[i] ? strlen(parts[i]) : 0;
		put64(len, parts[i] ? l : UINT64_MAX); /* NULL differs from "" */
		sha256_update(&c, len, sizeof(len));
		sha256_update(&c, parts[i] ? parts[i] : "", l);
	}
	sha256_final(&c, key);
}

/* ---- entries ------------------------------------------------------------- */

static struct persist_entry *entry_new(struct persist *p, const uint8_t *key)
{
	struct persist_entry *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->p = p;
	memcpy(e->key, key, PERSIST_KEY_LEN);
	to_hex(key, e->hex);
	e->length = -1;
	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->maplock, NULL);
	return e;
}

static void entry_free(struct persist_entry *e)
{
	rangeset_free(&e->cached);
	rangeset_free(&e->ondisk);
	free(e->etag);
	free(e->lm);
	pthread_mutex_destroy(&e->lock);
	pthread_mutex_destroy(&e->maplock);
	free(e);
}

/* Delete the entry's files: the map first, so a crash in between leaves a
 * data file without a map (deleted at the next open), never a map without
 * its data. */
static void entry_unlink(struct persist_entry *e)
{
	char name[HEX_LEN + 8];
	name_of(e, "map", name, sizeof(name));
	if (unlinkat(e->p->dirfd, name, 0) == 0)
		fsync_dir(e->p);
	name_of(e, "data", name, sizeof(name));
	unlinkat(e->p->dirfd, name, 0);
	e->on_disk = false;
	e->blocks = 0;
}

/* ---- reading a map --------------------------------------------------------- */

/* The whole of file @name in DIR, at most @max bytes. NULL with errno. */
static uint8_t *read_file(struct persist *p, const char *name, size_t max, size_t *len)
{
	int fd = openat(p->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
		errno = EFBIG;
		close(fd);
		return NULL;
	}
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (buf && got != (size_t)st.st_size) {
		free(buf);
		errno = EIO;
		return NULL;
	}
	*len = got;
	return buf;
}

/* Parse map @buf into @e. Returns NULL or what is wrong with it. */
static const char *parse_map(struct persist_entry *e, const uint8_t *buf, size_t len)
{
	if (len < HDR_LEN + 4 || memcmp(buf, MAGIC, 8) != 0)
		return "not a streamfs map";
	if (crc32c(0, buf, len - 4) != get32(buf + len - 4))
		return "checksum mismatch";
	if (memcmp(buf + 8, e->key, PERSIST_KEY_LEN) != 0)
		return "a map of another entry";
	int64_t length = (int64_t)get64(buf + 40);
	uint32_t el = get32(buf + 56), ll = get32(buf + 60), n = get32(buf + 64);
	if (el > ETAG_MAX || ll > LM_MAX || n > RANGES_MAX ||
	    len != HDR_LEN + (size_t)el + ll + (size_t)n * 16 + 4)
		return "bad sizes";
	if (length < 0 || (!el && !ll))
		return "no length or no validator";
	const uint8_t *r = buf + HDR_LEN + el + ll;
	uint64_t prev = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t a = get64(r + 16 * i), b = get64(r + 16 * i + 8);
		if (a >= b || (i && a <= prev) || b > (uint64_t)length)
			return "bad ranges";
		if (rangeset_add(&e->cached, a, b) < 0)
			return "out of memory";
		prev = b;
	}
	e->length = length;
	e->last_used = get64(buf + 48);
	e->etag = el ? strndup((const char *)buf + HDR_LEN, el) : NULL;
	e->lm = ll ? strndup((const char *)buf + HDR_LEN + el, ll) : NULL;
	if ((el && !e->etag) || (ll && !e->lm))
		return "out of memory";
	return NULL;
}

/*
 * Cut the cached ranges to what HEX.data really holds: its size, and its
 * data extents (a hole punched by an eviction, or a block allocated and
 * never written, is not data). Returns NULL or what is wrong.
 */
static const char *check_data(struct persist_entry *e)
{
	char name[HEX_LEN + 8];
	name_of(e, "data", name, sizeof(name));
	int fd = openat(e->p->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return "no data file";
	struct rangeset data = {0};
	for (size_t i = 0; i < e->cached.n; i++) {
		uint64_t off = e->cached.r[i].start, end = e->cached.r[i].end;
		while (off < end) {
			off_t d = lseek(fd, (off_t)off, SEEK_DATA);
			if (d < 0 || (uint64_t)d >= end)
				break;
			off_t h = lseek(fd, d, SEEK_HOLE);
			if (h < 0)
				break;
			uint64_t b = (uint64_t)h < end ? (uint64_t)h : end;
			if (rangeset_add(&data, (uint64_t)d, b) < 0) {
				close(fd);
				rangeset_free(&data);
				return "out of memory";
			}
			off = b;
		}
	}
	close(fd);
	uint64_t lost = e->cached.total - data.total;
	if (lost)
		log_info("persist: %s: %" PRIu64 " cached bytes are no longer in the data file",
		         e->hex, lost);
	rangeset_free(&e->cached);
	e->cached = data;
	return NULL;
}

/* Load HEX.map; a damaged or foreign one is deleted with its data. */
static void load_entry(struct persist *p, const char *hex)
{
	uint8_t key[PERSIST_KEY_LEN];
	if (!from_hex(hex, key))
		return;
	struct persist_entry *e = entry_new(p, key);
	if (!e)
		return;
	char name[HEX_LEN + 8];
	size_t len = 0;
	name_of(e, "map", name, sizeof(name));
	uint8_t *buf =
	    read_file(p, name, HDR_LEN + ETAG_MAX + LM_MAX + 16ull * RANGES_MAX + 4, &len);
	const char *bad = buf ? parse_map(e, buf, len) : strerror(errno);
	free(buf);
	if (!bad)
		bad = check_data(e);
	if (bad) {
		log_warn("persist: discarding cache entry %s in %s: %s", hex, p->dir, bad);
		entry_unlink(e);
		entry_free(e);
		return;
	}
	for (size_t i = 0; i < e->cached.n; i++)
		if (rangeset_add(&e->ondisk, e->cached.r[i].start, e->cached.r[i].end) < 0) {
			log_warn("persist: discarding cache entry %s in %s: out of memory", hex,
			         p->dir);
			entry_unlink(e);
			entry_free(e);
			return;
		}
	e->on_disk = true;
	e->blocks = blocks_of(&e->cached);
	e->next = p->entries;
	p->entries = e;
}

static bool is_entry_file(const char *n, const char *ext)
{
	size_t l = strlen(n);
	uint8_t key[PERSIST_KEY_LEN];
	return l == HEX_LEN + 1 + strlen(ext) && n[HEX_LEN] == '.' &&
	       !strcmp(n + HEX_LEN + 1, ext) && from_hex(n, key);
}

static struct persist_entry *find(struct persist *p, const char *hex)
{
	for (struct persist_entry *e = p->entries; e; e = e->next)
		if (!memcmp(e->hex, hex, HEX_LEN))
			return e;
	return NULL;
}

/* Read every map, then delete what no map describes: data files left by a
 * crash before their first map, and half-written maps. */
static int scan(struct persist *p)
{
	int fd = dup(p->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	struct dirent *de;
	while ((de = readdir(d)))
		if (is_entry_file(de->d_name, "map"))
			load_entry(p, de->d_name);
	rewinddir(d);
	while ((de = readdir(d))) {
		bool tmp = is_entry_file(de->d_name, "tmp");
		if (tmp || (is_entry_file(de->d_name, "data") && !find(p, de->d_name))) {
			if (!tmp)
				log_info("persist: deleting %s in %s: no map describes it",
				         de->d_name, p->dir);
			unlinkat(p->dirfd, de->d_name, 0);
		}
	}
	closedir(d);
	return 0;
}

/* Delete the least recently used entries until the rest fit in @limit. */
static void trim(struct persist *p, uint64_t limit)
{
	for (;;) {
		uint64_t total = 0;
		struct persist_entry **oldest = NULL;
		for (struct persist_entry **q = &p->entries; *q; q = &(*q)->next) {
			total += (*q)->blocks * BLK;
			if (!oldest || (*q)->last_used < (*oldest)->last_used)
				oldest = q;
		}
		if (!limit || total <= limit || !oldest)
			return;
		struct persist_entry *e = *oldest;
		*oldest = e->next;
		log_info("persist: deleting cache entry %s (%" PRIu64 " MiB, last used %" PRIu64
		         ") to fit --cache-size",
		         e->hex, e->blocks, e->last_used);
		entry_unlink(e);
		entry_free(e);
	}
}

/* ---- open, close ----------------------------------------------------------- */

/*
 * flock() @fd, waiting at most LOCK_WAIT_MS: a mount that was just
 * unmounted may still be writing its last maps (fusermount3 -u returns
 * before the daemon exits), and a remount right after it should wait for
 * that, not fail. A mount that stays is refused after that. Returns 0 or
 * -1 with errno (EWOULDBLOCK: in use).
 */
static int lock_dir(int fd)
{
	for (int waited = 0;; waited += LOCK_STEP_MS) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK || waited >= LOCK_WAIT_MS)
			return -1;
		struct timespec t = {0, LOCK_STEP_MS * 1000000L};
		nanosleep(&t, NULL);
	}
}

struct persist *persist_open(const char *dir, uint64_t limit, char *err, size_t errlen)
{
	struct persist *p = calloc(1, sizeof(*p));
	if (!p || !(p->dir = strdup(dir))) {
		free(p);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->lockfd = -1;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->dirfd < 0) {
		snprintf(err, errlen, "cannot use '%s' for --persist: %s", dir, strerror(errno));
		goto err;
	}
	p->lockfd = openat(p->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (p->lockfd < 0) {
		snprintf(err, errlen, "cannot use '%s' for --persist: %s", dir, strerror(errno));
		goto err;
	}
	if (lock_dir(p->lockfd) < 0) {
		if (errno == EWOULDBLOCK)
			snprintf(err, errlen,
			         "cache directory '%s' is in use by another streamfs mount with "
			         "--persist (one mount per directory)",
			         dir);
		else
			snprintf(err, errlen, "cannot lock '%s/lock': %s", dir, strerror(errno));
		goto err;
	}
	int r = scan(p);
	if (r < 0) {
		snprintf(err, errlen, "cannot read '%s': %s", dir, strerror(-r));
		goto err;
	}
	trim(p, limit);
	return p;
err:
	persist_close(p);
	return NULL;
}

/* ---- syncing ----------------------------------------------------------------- */

/* Write HEX.map for @e (validators @etag, @lm) from @ranges, if the entry
 * was not discarded since @gen. Returns 0 or -errno. */
static int write_map(struct persist_entry *e, unsigned gen, const struct rangeset *ranges,
                     int64_t length, const char *etag, const char *lm, uint64_t last_used)
{
	size_t el = etag ? strlen(etag) : 0, ll = lm ? strlen(lm) : 0;
	if (el > ETAG_MAX || ll > LM_MAX)
		return -EINVAL;
	size_t len = HDR_LEN + el + ll + ranges->n * 16 + 4;
	uint8_t *buf = calloc(1, len);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, MAGIC, 8);
	memcpy(buf + 8, e->key, PERSIST_KEY_LEN);
	put64(buf + 40, (uint64_t)length);
	put64(buf + 48, last_used);
	put32(buf + 56, (uint32_t)el);
	put32(buf + 60, (uint32_t)ll);
	put32(buf + 64, (uint32_t)ranges->n);
	memcpy(buf + HDR_LEN, etag ? etag : "", el);
	memcpy(buf + HDR_LEN + el, lm ? lm : "", ll);
	uint8_t *r = buf + HDR_LEN + el + ll;
	for (size_t i = 0; i < ranges->n; i++) {
		put64(r + 16 * i, ranges->r[i].start);
		put64(r + 16 * i + 8, ranges->r[i].end);
	}
	put32(buf + len - 4, crc32c(0, buf, len - 4));

	char tmp[HEX_LEN + 8], map[HEX_LEN + 8];
	name_of(e, "tmp", tmp, sizeof(tmp));
	name_of(e, "map", map, sizeof(map));
	int result = 0;
	int fd =
	    openat(e->p->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		free(buf);
		return -errno;
	}
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			result = n < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)n;
	}
	free(buf);
	if (result == 0 && fsync(fd) < 0)
		result = -errno;
	close(fd);
	if (result == 0) {
		pthread_mutex_lock(&e->lock);
		bool first = !e->on_disk;
		if (gen != e->gen) {
			result = -ESTALE; /* discarded meanwhile: the map is wrong now */
		} else if (renameat(e->p->dirfd, tmp, e->p->dirfd, map) < 0) {
			result = -errno;
		} else {
			e->on_disk = true;
			e->blocks = blocks_of(ranges);
			if (first)
				fsync_dir(e->p);
		}
		pthread_mutex_unlock(&e->lock);
	}
	if (result < 0)
		unlinkat(e->p->dirfd, tmp, 0);
	return result;
}

/* The most recent tick of the stream's blocks (reads and writes). Under
 * the stream's lock. */
static uint64_t max_tick(const struct stream *s)
{
	uint64_t t = 0;
	for (uint64_t i = 0; i < s->blk_n; i++)
		if (s->blk[i] >> 1 > t)
			t = s->blk[i] >> 1;
	return t;
}

/* Write @e's map if its stream has changed since the last one. */
static void sync_entry(struct persist_entry *e)
{
	pthread_mutex_lock(&e->lock);
	struct stream *s = e->s;
	bool go = s && e->keep && e->checked;
	unsigned gen = e->gen;
	int64_t length = e->length;
	char *etag = go && e->etag ? strdup(e->etag) : NULL;
	char *lm = go && e->lm ? strdup(e->lm) : NULL;
	go = go && (!e->etag || etag) && (!e->lm || lm);
	pthread_mutex_unlock(&e->lock);
	if (!go)
		goto out;

	struct rangeset snap = {0};
	pthread_mutex_lock(&s->lock);
	uint64_t gone = s->evicted + s->dropped, tick = max_tick(s);
	bool ok = true;
	for (size_t i = 0; ok && i < s->present.n; i++)
		ok = rangeset_add(&snap, s->present.r[i].start, s->present.r[i].end) == 0;
	int fd = store_fd(s->store);
	pthread_mutex_unlock(&s->lock);
	if (!ok || fd < 0 ||
	    (snap.total == e->synced_total && snap.n == e->synced_n && tick == e->synced_tick)) {
		rangeset_free(&snap);
		goto out;
	}
	/* The ranges were written before we copied them: on disk after this. */
	if (fdatasync(fd) < 0) {
		log_warn("%s: persist: fdatasync: %s", stream_name(s), strerror(errno));
		rangeset_free(&snap);
		goto out;
	}
	/* Under maplock from here: persist_before_write() must not drop a
	 * claim between our check and our map, nor we name a block it was
	 * told is gone. */
	pthread_mutex_lock(&e->maplock);
	pthread_mutex_lock(&s->lock);
	bool evicted = s->evicted + s->dropped != gone;
	pthread_mutex_unlock(&s->lock);
	if (evicted) { /* a block we copied may be a hole now, or half refilled */
		pthread_mutex_unlock(&e->maplock);
		rangeset_free(&snap);
		goto out;
	}
	uint64_t now = (uint64_t)time(NULL);
	pthread_mutex_lock(&e->lock);
	if (tick != e->synced_tick)
		e->last_used = now;
	uint64_t used = e->last_used;
	pthread_mutex_unlock(&e->lock);
	int r = write_map(e, gen, &snap, length, etag, lm, used);
	if (r == 0) {
		e->synced_total = snap.total;
		e->synced_n = snap.n;
		e->synced_tick = tick;
		rangeset_free(&e->ondisk);
		e->ondisk = snap;
		snap = (struct rangeset){0};
	} else if (r != -ESTALE) {
		log_warn("%s: persist: cannot write the map: %s", stream_name(s), strerror(-r));
	}
	pthread_mutex_unlock(&e->maplock);
	rangeset_free(&snap);
out:
	free(etag);
	free(lm);
}

/*
 * A write into the data file may land in a page whose other bytes the map
 * on disk names but which were evicted since (a punched hole): a crash
 * before the next map would leave that page half written, zeros where the
 * map promises bytes. So before such a write, a map that names only what
 * is still present is written (dropping a claim is always safe: no data
 * has to reach the disk first). One map drops every claim evicted so far,
 * so refills of blocks evicted long ago, the usual case, need one map
 * between them, not one each. Checked in units of 64 KiB, coarser than any
 * page or file system block here.
 */
#define WRITE_UNIT (64u << 10)

void persist_before_write(struct persist_entry *e, struct stream *s, uint64_t a, uint64_t b)
{
	uint64_t pa = a / WRITE_UNIT * WRITE_UNIT,
	         pb = (b + WRITE_UNIT - 1) / WRITE_UNIT * WRITE_UNIT;
	pthread_mutex_lock(&e->maplock);
	if (rangeset_next_present(&e->ondisk, pa) >= pb) {
		pthread_mutex_unlock(&e->maplock); /* no claim near: the usual case */
		return;
	}
	/* What the map names and is still present (never punched since). */
	struct rangeset keep = {0};
	bool ok = true;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; ok && i < e->ondisk.n; i++) {
		uint64_t x = e->ondisk.r[i].start, y = e->ondisk.r[i].end;
		while (ok && x < y) {
			uint64_t np = rangeset_next_present(&s->present, x);
			if (np >= y)
				break;
			uint64_t ne = rangeset_run_end(&s->present, np);
			if (ne > y)
				ne = y;
			ok = rangeset_add(&keep, np, ne) == 0;
			x = ne;
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (ok && keep.total == e->ondisk.total) {
		pthread_mutex_unlock(&e->maplock); /* the claims near are present */
		rangeset_free(&keep);
		return;
	}
	pthread_mutex_lock(&e->lock);
	unsigned gen = e->gen;
	int64_t length = e->length;
	uint64_t used = e->last_used;
	char *etag = e->etag ? strdup(e->etag) : NULL;
	char *lm = e->lm ? strdup(e->lm) : NULL;
	bool mem = (!e->etag || etag) && (!e->lm || lm);
	pthread_mutex_unlock(&e->lock);
	int r = ok && mem ? write_map(e, gen, &keep, length, etag, lm, used) : -ENOMEM;
	if (r == 0) {
		rangeset_free(&e->ondisk);
		e->ondisk = keep;
		keep = (struct rangeset){0};
	} else {
		/* Without a smaller map, no map: the copy is lost, never wrong. */
		if (r != -ESTALE)
			log_warn("%s: persist: cannot write the map (%s): dropping it",
			         stream_name(s), strerror(-r));
		char name[HEX_LEN + 8];
		name_of(e, "map", name, sizeof(name));
		pthread_mutex_lock(&e->lock);
		if (unlinkat(e->p->dirfd, name, 0) == 0)
			fsync_dir(e->p);
		e->on_disk = false;
		e->blocks = 0;
		pthread_mutex_unlock(&e->lock);
		rangeset_free(&e->ondisk);
		e->ondisk = (struct rangeset){0};
	}
	pthread_mutex_unlock(&e->maplock);
	rangeset_free(&keep);
	free(etag);
	free(lm);
}

/* Every entry with a stream, once. Entries are freed only at close, after
 * this thread is joined: the list may be walked without the lock once
 * read. */
static void sync_all(struct persist *p)
{
	pthread_mutex_lock(&p->lock);
	struct persist_entry *first = p->entries;
	pthread_mutex_unlock(&p->lock);
	for (struct persist_entry *e = first; e; e = e->next)
		sync_entry(e);
}

static void *sync_thread(void *arg)
{
	struct persist *p = arg;
	pthread_setname_np(pthread_self(), "streamfs-sync");
	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_sec += SYNC_MS / 1000;
		pthread_cond_timedwait(&p->cond, &p->lock, &t);
		if (p->stop)
			break;
		pthread_mutex_unlock(&p->lock);
		sync_all(p);
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int persist_start(struct persist *p)
{
	int r = pthread_create(&p->thread, NULL, sync_thread, p);
	if (r == 0)
		p->thread_started = true;
	return -r;
}

void persist_close(struct persist *p)
{
	if (!p)
		return;
	if (p->thread_started) {
		pthread_mutex_lock(&p->lock);
		p->stop = true;
		pthread_cond_signal(&p->cond);
		pthread_mutex_unlock(&p->lock);
		pthread_join(p->thread, NULL);
	}
	if (p->dirfd >= 0)
		sync_all(p);
	struct persist_entry *e = p->entries;
	while (e) {
		struct persist_entry *next = e->next;
		/* A resource that ran without a validator or a length is not
		 * kept; one whose stream never started stays as it was. */
		if (e->s && e->checked && !e->keep)
			entry_unlink(e);
		if (e->s) {
			pthread_mutex_lock(&e->s->lock);
			e->s->persist = NULL;
			pthread_mutex_unlock(&e->s->lock);
			stream_unref(e->s);
		}
		entry_free(e);
		e = next;
	}
	if (p->lockfd >= 0)
		close(p->lockfd); /* the flock goes with it */
	if (p->dirfd >= 0)
		close(p->dirfd);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p->dir);
	free(p);
}

/* ---- claiming ------------------------------------------------------------------- */

struct persist_entry *persist_claim(struct persist *p, const uint8_t key[PERSIST_KEY_LEN])
{
	char hex[HEX_LEN + 1];
	to_hex(key, hex);
	pthread_mutex_lock(&p->lock);
	struct persist_entry *e = find(p, hex);
	if (!e && (e = entry_new(p, key))) {
		e->next = p->entries;
		p->entries = e;
	}
	if (e && e->claimed) {
		e = NULL;
		errno = EBUSY;
	} else if (e) {
		e->claimed = true;
	} else {
		errno = ENOMEM;
	}
	pthread_mutex_unlock(&p->lock);
	return e;
}

struct store *persist_store(struct persist_entry *e)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/%s.data", e->p->dir, e->hex) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	return store_new_file(path);
}

void persist_attach(struct persist_entry *e, struct stream *s)
{
	pthread_mutex_lock(&e->lock);
	e->s = stream_ref(s);
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_lock(&s->lock);
	s->persist = e;
	pthread_mutex_unlock(&s->lock);
}

/* ---- the URL source --------------------------------------------------------------- */

bool persist_cached(struct persist_entry *e, char *etag, size_t etag_size, char *lm, size_t lm_size,
                    int64_t *length, uint64_t *resume)
{
	pthread_mutex_lock(&e->lock);
	bool any = !e->checked && e->cached.total > 0 && e->length > 0 && (e->etag || e->lm);
	if (any) {
		snprintf(etag, etag_size, "%s", e->etag ? e->etag : "");
		snprintf(lm, lm_size, "%s", e->lm ? e->lm : "");
		*length = e->length;
		uint64_t r = rangeset_run_end(&e->cached, 0);
		*resume = r < (uint64_t)e->length ? r : (uint64_t)e->length - 1;
	}
	pthread_mutex_unlock(&e->lock);
	return any;
}

/* [a, b) of the data file is the resource's: present in the stream. */
static bool adopt_range(struct stream *s, uint64_t a, uint64_t b)
{
	struct stream_waiter ready = {.next = NULL};
	bool ok = false;
	pthread_mutex_lock(&s->lock);
	if (s->length >= 0 && b > (uint64_t)s->length)
		b = (uint64_t)s->length;
	if (a < b && accepts_writes(s))
		ok = present_add(s, a, b, &ready) == 0;
	pthread_mutex_unlock(&s->lock);
	finish_ready(&ready);
	return ok;
}

uint64_t persist_adopt(struct persist_entry *e)
{
	pthread_mutex_lock(&e->lock);
	struct stream *s = e->s;
	struct rangeset c = e->cached;
	e->cached = (struct rangeset){0};
	e->checked = true;
	pthread_mutex_unlock(&e->lock);
	uint64_t adopted = 0;
	size_t i = 0;
	/* Block by block as far as the budget gives room: what does not fit
	 * is given back to the file system (the map forgets it next sync). */
	for (; s && i < c.n; i++) {
		uint64_t a = c.r[i].start, b = c.r[i].end;
		/* Pinned: room for a later block must not be made by evicting
		 * (punching) an earlier one before it is even present. */
		struct pin pin = {.a = a, .b = b};
		pthread_mutex_lock(&s->lock);
		pin_add(s, &pin);
		pthread_mutex_unlock(&s->lock);
		int64_t held = hold_range(s, a, b, 0);
		uint64_t to = held < 0 ? a : (uint64_t)held;
		if (to > a && adopt_range(s, a, to))
			adopted += to - a;
		unpin(s, &pin);
		if (held < 0)
			break;
		if (to < b) {
			store_punch(s->store, to, b - to);
			i++;
			break;
		}
	}
	for (; s && i < c.n; i++)
		store_punch(s->store, c.r[i].start, c.r[i].end - c.r[i].start);
	rangeset_free(&c);
	if (s) {
		stream_set_attr(s, "persist", "reused %" PRIu64 " bytes", adopted);
		log_info("%s: %" PRIu64 " bytes from the persistent cache, validated",
		         stream_name(s), adopted);
	}
	return adopted;
}

void persist_discard(struct persist_entry *e, const char *why)
{
	pthread_mutex_lock(&e->maplock);
	rangeset_free(&e->ondisk); /* the map goes below */
	e->ondisk = (struct rangeset){0};
	pthread_mutex_lock(&e->lock);
	struct stream *s = e->s;
	e->gen++;
	if (e->on_disk) {
		char name[HEX_LEN + 8];
		name_of(e, "map", name, sizeof(name));
		unlinkat(e->p->dirfd, name, 0);
		fsync_dir(e->p);
		e->on_disk = false;
		e->blocks = 0;
	}
	rangeset_free(&e->cached);
	e->cached = (struct rangeset){0};
	free(e->etag);
	free(e->lm);
	e->etag = e->lm = NULL;
	e->keep = false;
	e->said = true;
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&e->maplock);
	if (!s)
		return;
	/* Nothing of it was adopted: the stream holds none of these bytes. */
	int fd = store_fd(s->store);
	if (fd >= 0 && ftruncate(fd, 0) < 0)
		log_warn("%s: persist: cannot truncate the data file: %s", stream_name(s),
		         strerror(errno));
	stream_set_attr(s, "persist", "discarded: %s", why);
	log_info("%s: cached copy discarded: %s", stream_name(s), why);
}

void persist_set_resource(struct persist_entry *e, int64_t length, const char *etag, const char *lm)
{
	pthread_mutex_lock(&e->lock);
	char *ne = etag ? strdup(etag) : NULL, *nl = lm ? strdup(lm) : NULL;
	free(e->etag);
	free(e->lm);
	e->etag = ne;
	e->lm = nl;
	e->length = length;
	e->keep = length >= 0 && (ne || nl) && (!etag || ne) && (!lm || nl);
	bool fresh = !e->checked && !e->said;
	e->checked = true;
	struct stream *s = e->s;
	pthread_mutex_unlock(&e->lock);
	if (s && fresh && !e->keep)
		stream_set_attr(s, "persist", "not kept: no %s",
		                length < 0 ? "length" : "validator");
	else if (s && fresh)
		stream_set_attr(s, "persist", "new");
}
