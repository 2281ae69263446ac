/*
 * fuzz_rangeset.c - libFuzzer target for rangeset.c, checked against a
 * model.
 *
 * Every range end the input makes is BASE + cell * UNIT with cell in
 * [0, NCELL], so which bytes are present is constant inside a cell and a
 * bitmap of NCELL cells is an exact model. UNIT (1 to 2^47) and BASE (0, or
 * close enough to UINT64_MAX that the top cell ends there) come from the
 * first two input bytes, so the same shapes are tried with tiny and huge
 * offsets and at the top of the 64-bit range. Queries are made at any
 * byte, not only at cell edges.
 *
 * Input: 2 header bytes, then 5-byte operations (op, a, b, ra, rb):
 * add/remove [a, b) in cells, contains/run_end/next_present at offsets
 * cell + fraction. After each operation the set's invariants (sorted,
 * non-empty, disjoint, non-adjacent, total) and its equality with the
 * model are checked; any difference aborts.
 */
#include "rangeset.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCELL 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond, ...)                                                                         \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct fz {
	uint64_t unit, base;
	bool cell[NCELL];
	struct rangeset rs;
};

/* The byte at cell @c plus @frac/256 of a cell. */
static uint64_t at(const struct fz *f, unsigned c, uint8_t frac)
{
	return f->base + (uint64_t)c * f->unit + (f->unit > 1 ? f->unit / 256 * frac : 0);
}

/* Cell of byte @off (off >= base, below the top). */
static unsigned cell_of(const struct fz *f, uint64_t off)
{
	return (unsigned)((off - f->base) / f->unit);
}

static void check_invariants(const struct fz *f)
{
	const struct rangeset *rs = &f->rs;
	uint64_t total = 0, model = 0;
	for (size_t i = 0; i < rs->n; i++) {
		REQUIRE(rs->r[i].start < rs->r[i].end, "range %zu empty", i);
		if (i + 1 < rs->n)
			REQUIRE(rs->r[i].end < rs->r[i + 1].start,
			        "ranges %zu and %zu touch or overlap or are unsorted", i, i + 1);
		total += rs->r[i].end - rs->r[i].start;
	}
	REQUIRE(rs->n <= rs->cap || (rs->n == 0), "n %zu > cap %zu", rs->n, rs->cap);
	REQUIRE(total == rs->total, "total %llu, sum %llu", (unsigned long long)rs->total,
	        (unsigned long long)total);
	for (unsigned c = 0; c < NCELL; c++)
		model += f->cell[c] ? f->unit : 0;
	REQUIRE(total == model, "total %llu, model %llu", (unsigned long long)total,
	        (unsigned long long)model);
	/* Every range edge is a cell edge, and the cells agree. */
	for (unsigned c = 0; c < NCELL; c++) {
		uint64_t a = at(f, c, 0);
		bool in = rangeset_contains(rs, a, a + f->unit);
		bool none = rangeset_next_present(rs, a) >= a + f->unit;
		REQUIRE(in == f->cell[c] && none == !f->cell[c], "cell %u: contains %d, model %d",
		        c, in, f->cell[c]);
	}
}

static void op_change(struct fz *f, bool add, unsigned a, unsigned b)
{
	int r = add ? rangeset_add(&f->rs, at(f, a, 0), at(f, b, 0))
	            : rangeset_remove(&f->rs, at(f, a, 0), at(f, b, 0));
	REQUIRE(r == 0, "%s(%u, %u) = %d", add ? "add" : "remove", a, b, r);
	for (unsigned c = a; c < b; c++)
		f->cell[c] = add;
}

static void op_contains(struct fz *f, unsigned a, uint8_t ra, unsigned b, uint8_t rb)
{
	uint64_t s = at(f, a, ra), e = b >= NCELL ? at(f, NCELL, 0) : at(f, b, rb);
	bool want = true;
	if (s < e)
		for (unsigned c = cell_of(f, s); c <= cell_of(f, e - 1); c++)
			want = want && f->cell[c];
	bool got = rangeset_contains(&f->rs, s, e);
	REQUIRE(got == want, "contains(%llu, %llu) = %d, model %d", (unsigned long long)s,
	        (unsigned long long)e, got, want);
}

static void op_run_end(struct fz *f, unsigned a, uint8_t ra)
{
	uint64_t off = at(f, a, ra), want = off;
	if (f->cell[a]) {
		unsigned c = a;
		while (c < NCELL && f->cell[c])
			c++;
		want = at(f, c, 0);
	}
	uint64_t got = rangeset_run_end(&f->rs, off);
	REQUIRE(got == want, "run_end(%llu) = %llu, model %llu", (unsigned long long)off,
	        (unsigned long long)got, (unsigned long long)want);
}

static void op_next_present(struct fz *f, unsigned a, uint8_t ra)
{
	uint64_t off = at(f, a, ra), want = UINT64_MAX;
	if (f->cell[a]) {
		want = off;
	} else {
		for (unsigned c = a + 1; c < NCELL; c++) {
			if (f->cell[c]) {
				want = at(f, c, 0);
				break;
			}
		}
	}
	uint64_t got = rangeset_next_present(&f->rs, off);
	REQUIRE(got == want, "next_present(%llu) = %llu, model %llu", (unsigned long long)off,
	        (unsigned long long)got, (unsigned long long)want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f;
	if (size < 2)
		return 0;
	memset(&f, 0, sizeof(f));
	f.unit = 1ULL << (data[0] % 48);
	/* At the top, the last cell ends exactly at UINT64_MAX. */
	f.base = data[1] & 1 ? UINT64_MAX - (uint64_t)NCELL * f.unit : 0;
	for (size_t i = 2; i + 5 <= size; i += 5) {
		const uint8_t *p = data + i;
		unsigned a = p[1] % (NCELL + 1), b = p[2] % (NCELL + 1);
		unsigned ca = a < NCELL ? a : NCELL - 1; /* a cell, for queries at a byte */
		switch (p[0] % 6) {
		case 0:
		case 1:
			/* start >= end is a no-op for both calls. */
			if (a < b)
				op_change(&f, p[0] % 6 == 0, a, b);
			else
				REQUIRE(
				    (p[0] % 6 == 0
				         ? rangeset_add(&f.rs, at(&f, a, 0), at(&f, b, 0))
				         : rangeset_remove(&f.rs, at(&f, a, 0), at(&f, b, 0))) == 0,
				    "empty change failed");
			break;
		case 2:
			op_contains(&f, ca, p[3], b, p[4]);
			break;
		case 3:
			op_run_end(&f, ca, p[3]);
			break;
		case 4:
			op_next_present(&f, ca, p[3]);
			break;
		case 5: /* a range that is not cell-aligned, added and removed again */
			if (f.unit >= 256 && a < b && !f.cell[ca]) {
				/* Compared as lengths: at the top of the 64-bit range
				 * s + 1 + p[4] would wrap past the cell's end. */
				uint64_t s = at(&f, ca, p[3] | 1), e = 0;
				if ((uint64_t)p[4] + 1 < at(&f, ca + 1, 0) - s) {
					e = s + 1 + p[4];
					REQUIRE(rangeset_add(&f.rs, s, e) == 0, "unaligned add");
					REQUIRE(rangeset_contains(&f.rs, s, e),
					        "unaligned range missing");
					REQUIRE(rangeset_run_end(&f.rs, s) == e,
					        "unaligned run_end");
					REQUIRE(rangeset_remove(&f.rs, s, e) == 0,
					        "unaligned remove");
				}
			}
			break;
		}
		check_invariants(&f);
	}
	rangeset_free(&f.rs);
	return 0;
}
