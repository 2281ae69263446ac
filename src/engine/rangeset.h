/*
 * rangeset.h - a set of byte ranges [start, end), kept sorted, disjoint and
 * non-adjacent (touching ranges are merged), so "is [a,b) all here?" is one
 * binary search. A stream filled sequentially holds one range; random
 * access ahead of the frontier adds a few more. Not thread-safe: the owner
 * locks.
 */
#ifndef STREAMFS_RANGESET_H
#define STREAMFS_RANGESET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct range {
	uint64_t start, end;
};

struct rangeset {
	struct range *r; /* sorted by start; r[i].end < r[i+1].start */
	size_t n, cap;
	uint64_t total; /* sum of lengths */
};

/* An empty set needs no allocation: zero-initialise it. */
void rangeset_free(struct rangeset *rs);

/* Add [start, end). Returns 0 or -ENOMEM (the set is then unchanged). */
int rangeset_add(struct rangeset *rs, uint64_t start, uint64_t end);

/* Remove [start, end). Returns 0 or -ENOMEM (splitting a range needs room;
 * the set is then unchanged). */
int rangeset_remove(struct rangeset *rs, uint64_t start, uint64_t end);

/* True if every byte of [start, end) is present (true for an empty range). */
bool rangeset_contains(const struct rangeset *rs, uint64_t start, uint64_t end);

/* The end of the run of present bytes starting at @off, or @off if the byte
 * at @off is missing. */
uint64_t rangeset_run_end(const struct rangeset *rs, uint64_t off);

/* The first present byte at or after @off, or UINT64_MAX if none. */
uint64_t rangeset_next_present(const struct rangeset *rs, uint64_t off);

#endif
