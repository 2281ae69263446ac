/*
 * rangeset.c - see rangeset.h. Ranges live in a sorted array: a stream has
 * one range in the common case, a handful with random access, so an array
 * with binary search beats a tree on every count that matters here.
 */
#include "rangeset.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void rangeset_free(struct rangeset *rs)
{
	free(rs->r);
	memset(rs, 0, sizeof(*rs));
}

/* Index of the first range whose end >= off (i.e. that contains off or lies
 * after it, or touches it from the left). */
static size_t lower(const struct rangeset *rs, uint64_t off)
{
	size_t lo = 0, hi = rs->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (rs->r[mid].end < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Room for one more range: the one growth rule of both add and remove,
 * checked against overflow. Returns 0 or -ENOMEM (nothing changed). */
static int grow(struct rangeset *rs)
{
	if (rs->n < rs->cap)
		return 0;
	size_t cap = rs->cap ? rs->cap * 2 : 4;
	if (cap < rs->cap || cap > SIZE_MAX / sizeof(*rs->r))
		return -ENOMEM;
	struct range *nr = realloc(rs->r, cap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	rs->r = nr;
	rs->cap = cap;
	return 0;
}

int rangeset_add(struct rangeset *rs, uint64_t start, uint64_t end)
{
	if (start >= end)
		return 0;
	size_t i = lower(rs, start);
	/* Ranges i..j-1 touch or overlap [start, end): merge them all. */
	size_t j = i;
	while (j < rs->n && rs->r[j].start <= end)
		j++;
	if (i == j) {
		if (grow(rs) < 0)
			return -ENOMEM;
		memmove(&rs->r[i + 1], &rs->r[i], (rs->n - i) * sizeof(*rs->r));
		rs->r[i].start = start;
		rs->r[i].end = end;
		rs->n++;
		rs->total += end - start;
		return 0;
	}
	uint64_t ns = rs->r[i].start < start ? rs->r[i].start : start;
	uint64_t ne = rs->r[j - 1].end > end ? rs->r[j - 1].end : end;
	for (size_t k = i; k < j; k++)
		rs->total -= rs->r[k].end - rs->r[k].start;
	rs->r[i].start = ns;
	rs->r[i].end = ne;
	rs->total += ne - ns;
	memmove(&rs->r[i + 1], &rs->r[j], (rs->n - j) * sizeof(*rs->r));
	rs->n -= j - i - 1;
	return 0;
}

int rangeset_remove(struct rangeset *rs, uint64_t start, uint64_t end)
{
	if (start >= end)
		return 0;
	size_t i = lower(rs, start);
	if (i < rs->n && rs->r[i].end == start)
		i++;
	/* A range strictly containing [start, end) splits in two. */
	if (i < rs->n && rs->r[i].start < start && rs->r[i].end > end) {
		if (grow(rs) < 0)
			return -ENOMEM;
		memmove(&rs->r[i + 1], &rs->r[i], (rs->n - i) * sizeof(*rs->r));
		rs->n++;
		rs->r[i].end = start;
		rs->r[i + 1].start = end;
		rs->total -= end - start;
		return 0;
	}
	/* Otherwise each overlapping range loses its middle: keep its head or
	 * its tail, or drop it whole; compact as we go. */
	size_t w = i;
	for (size_t k = i; k < rs->n; k++) {
		struct range r = rs->r[k];
		if (r.start < end && r.end > start) {
			uint64_t cs = r.start > start ? r.start : start;
			uint64_t ce = r.end < end ? r.end : end;
			rs->total -= ce - cs;
			if (r.start < start)
				r.end = start;
			else if (r.end > end)
				r.start = end;
			else
				continue;
		}
		rs->r[w++] = r;
	}
	rs->n = w;
	return 0;
}

uint64_t rangeset_run_end(const struct rangeset *rs, uint64_t off)
{
	size_t i = lower(rs, off);
	/* lower() may return a range ending exactly at off (end == off): that
	 * one does not contain off; ranges never touch, so the next starts
	 * later than off. */
	if (i < rs->n && rs->r[i].start <= off && off < rs->r[i].end)
		return rs->r[i].end;
	return off;
}

bool rangeset_contains(const struct rangeset *rs, uint64_t start, uint64_t end)
{
	if (start >= end)
		return true;
	return rangeset_run_end(rs, start) >= end;
}

uint64_t rangeset_next_present(const struct rangeset *rs, uint64_t off)
{
	size_t i = lower(rs, off);
	if (i < rs->n && rs->r[i].end == off)
		i++;
	if (i >= rs->n)
		return UINT64_MAX;
	return rs->r[i].start > off ? rs->r[i].start : off;
}
