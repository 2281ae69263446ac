/*
 * persist.h - the persistent cache (--persist --cache-dir DIR): URL
 * streams keep their bytes, the map of the bytes present and their
 * validators in DIR across unmounts, daemon crashes and reboots.
 *
 * One *entry* per resource, named by a SHA-256 of the URL and of the
 * request's identity (headers and credentials that can change the
 * response; never stored in clear): HEX.data holds the bytes at their
 * offsets (sparse), HEX.map the validators, the length, the last time
 * the entry was used and the ranges present, with a CRC-32C. The data
 * file is the stream's store (store_new_file()).
 *
 * The rules it keeps:
 *  - The map is never ahead of the data: a sync takes the stream's
 *    present ranges, fdatasync()s the data file, then writes the map
 *    (to HEX.tmp, fsync, rename). Bytes a map names were written before
 *    the map was. An eviction between the two skips that sync.
 *  - Nothing is trusted on load that is not there: a map that does not
 *    parse, fails its CRC, or names another key is discarded with a log
 *    line (its data too), and the ranges of a good map are cut to the
 *    data the file really holds (SEEK_DATA/SEEK_HOLE: punched or never
 *    written blocks read as holes).
 *  - Nothing cached is served before the origin confirmed it: a URL
 *    source with a cached copy asks for its first missing byte with
 *    If-Range (persist_cached()); if the answer is the same version
 *    (the same strong ETag, or without one the same Last-Modified and
 *    length) it persist_adopt()s the copy, else persist_discard()s it.
 *  - A resource without a validator or a length is not kept.
 *  - One mount per DIR: persist_open() takes flock(DIR/lock) for the
 *    daemon's life; a second mount is refused (after waiting 3 s for one
 *    that is shutting down).
 *
 * Threads: persist_open/start/close from the main thread; persist_claim,
 * persist_store and persist_attach from the thread that creates streams
 * (main, or the loop for "add"); the rest from the URL source's loop
 * thread. A sync thread writes maps once a second and at close. Lock
 * order: the persist lock, then an entry's lock; neither is held while a
 * stream's lock is taken, except that adoption reserves blocks in the
 * budget (cache.h) with no persist lock held.
 */
#ifndef STREAMFS_PERSIST_H
#define STREAMFS_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PERSIST_KEY_LEN 32

struct persist;
struct persist_entry;
struct stream;
struct store;

/*
 * Open DIR (absolute) for the persistent cache: lock DIR/lock, read the
 * entries (damaged and foreign ones are deleted with a log line), and if
 * @limit (bytes; 0: none) is set, delete the least recently used entries
 * until the rest fit in it. Returns NULL with one line in @err ("cache
 * directory '/x' is in use by another streamfs mount").
 */
struct persist *persist_open(const char *dir, uint64_t limit, char *err, size_t errlen);

/* Start the sync thread (after daemonizing: threads do not survive a
 * fork). Returns 0 or -errno; without it maps are written at close only. */
int persist_start(struct persist *p);

/* Stop the sync thread, write every entry's map a last time, delete the
 * entries that are not worth keeping, let go of the streams, unlock DIR
 * and free. After the sources stopped. NULL is fine. */
void persist_close(struct persist *p);

/* The key of a resource: SHA-256 over @n strings (the URL, then what
 * makes up the request's identity), each with its length. Can't fail. */
void persist_key(const char *const *parts, size_t n, uint8_t key[PERSIST_KEY_LEN]);

/*
 * The entry of @key, for one stream of this mount. Returns NULL with
 * errno EBUSY if another stream of this mount has it (a second file with
 * the same URL: it gets an ordinary store), or ENOMEM.
 */
struct persist_entry *persist_claim(struct persist *p, const uint8_t key[PERSIST_KEY_LEN]);

/* The store of @e: its data file, created when the stream starts.
 * Returns NULL with errno set. */
struct store *persist_store(struct persist_entry *e);

/* @s is @e's stream from now on (a reference is taken until close). */
void persist_attach(struct persist_entry *e, struct stream *s);

/* ---- the URL source (loop thread) ------------------------------------ */

/*
 * Is there a cached copy to revalidate? Then true, with its validators
 * (ETag or "" in @etag, Last-Modified or "" in @lm, cut to the sizes),
 * its length, and *@resume, where the revalidation request should start:
 * the first byte not cached (the last byte if all are).
 */
bool persist_cached(struct persist_entry *e, char *etag, size_t etag_size, char *lm, size_t lm_size,
                    int64_t *length, uint64_t *resume);

/*
 * The origin confirmed the cached copy (the stream's length is set): its
 * bytes become present in the stream, as far as the budget has room for
 * them (the rest is given back). Returns the bytes adopted.
 */
uint64_t persist_adopt(struct persist_entry *e);

/* The cached copy is not the resource's (@why, for the log): delete it
 * (the map first, then the data). */
void persist_discard(struct persist_entry *e, const char *why);

/* What the resource is now (its first response): what the map will
 * record. Without a validator or a length the entry is not kept. */
void persist_set_resource(struct persist_entry *e, int64_t length, const char *etag,
                          const char *lm);

#endif
