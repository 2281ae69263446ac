/*
 * test_rangeset.c - unit tests for rangeset.c: fixed cases for merging,
 * adjacency and overlap, then random adds checked after every step against
 * a bitmap model (every query at every offset, plus the structural
 * invariants: sorted, non-empty, disjoint, non-adjacent, total right).
 */
#include "fake_source.h"
#include "rangeset.h"

#include <stdlib.h>
#include <string.h>

/* The invariants rangeset.h promises. */
static bool well_formed(const struct rangeset *rs)
{
	uint64_t total = 0;
	for (size_t i = 0; i < rs->n; i++) {
		if (rs->r[i].start >= rs->r[i].end)
			return false;
		if (i + 1 < rs->n && rs->r[i].end >= rs->r[i + 1].start)
			return false;
		total += rs->r[i].end - rs->r[i].start;
	}
	return total == rs->total && rs->n <= rs->cap;
}

static void test_empty(void)
{
	struct rangeset rs = {0};
	CHECK(rangeset_contains(&rs, 5, 5));
	CHECK(!rangeset_contains(&rs, 0, 1));
	CHECK_EQ(rangeset_run_end(&rs, 0), 0);
	CHECK_EQ(rangeset_run_end(&rs, 77), 77);
	CHECK(rangeset_next_present(&rs, 0) == UINT64_MAX);
	CHECK_EQ(rangeset_add(&rs, 10, 10), 0); /* empty add: no-op */
	CHECK_EQ(rangeset_add(&rs, 10, 3), 0);  /* reversed: no-op */
	CHECK_EQ(rs.n, 0);
	CHECK_EQ(rs.total, 0);
	rangeset_free(&rs);
	rangeset_free(&rs); /* twice is fine: free zeroes it */
}

static void test_merge_cases(void)
{
	struct rangeset rs = {0};

	CHECK_EQ(rangeset_add(&rs, 10, 20), 0);
	CHECK_EQ(rangeset_add(&rs, 20, 30), 0); /* adjacent on the right */
	CHECK_EQ(rs.n, 1);
	CHECK_EQ(rangeset_add(&rs, 5, 10), 0); /* adjacent on the left */
	CHECK_EQ(rs.n, 1);
	CHECK_EQ(rs.r[0].start, 5);
	CHECK_EQ(rs.r[0].end, 30);
	CHECK_EQ(rs.total, 25);

	CHECK_EQ(rangeset_add(&rs, 40, 50), 0);
	CHECK_EQ(rangeset_add(&rs, 60, 70), 0);
	CHECK_EQ(rangeset_add(&rs, 0, 2), 0);
	CHECK_EQ(rs.n, 4);
	CHECK(well_formed(&rs));

	/* Not adjacent: one byte gap stays a gap. */
	CHECK_EQ(rangeset_add(&rs, 31, 39), 0);
	CHECK_EQ(rs.n, 5);
	CHECK(!rangeset_contains(&rs, 29, 32));
	CHECK_EQ(rangeset_run_end(&rs, 30), 30);
	CHECK_EQ(rangeset_next_present(&rs, 30), 31);

	/* Overlap of several ranges and the gaps between them, both ends
	 * touching: [5,30) [31,39) [40,50) [60,70) + [30,60) -> [5,70). */
	CHECK_EQ(rangeset_add(&rs, 30, 60), 0);
	CHECK(well_formed(&rs));
	CHECK_EQ(rs.n, 2);
	CHECK_EQ(rs.r[1].start, 5);
	CHECK_EQ(rs.r[1].end, 70);
	CHECK_EQ(rs.total, 2 + 65);

	/* Contained in an existing range: nothing changes. */
	CHECK_EQ(rangeset_add(&rs, 7, 9), 0);
	CHECK_EQ(rs.n, 2);
	CHECK_EQ(rs.total, 67);

	/* Covering everything. */
	CHECK_EQ(rangeset_add(&rs, 0, 100), 0);
	CHECK_EQ(rs.n, 1);
	CHECK_EQ(rs.total, 100);
	CHECK(rangeset_contains(&rs, 0, 100));
	CHECK(!rangeset_contains(&rs, 0, 101));
	CHECK_EQ(rangeset_run_end(&rs, 0), 100);
	CHECK_EQ(rangeset_run_end(&rs, 99), 100);
	CHECK_EQ(rangeset_run_end(&rs, 100), 100);
	CHECK_EQ(rangeset_next_present(&rs, 50), 50);
	CHECK(rangeset_next_present(&rs, 100) == UINT64_MAX);

	/* Offsets near the top of the 64-bit space. */
	CHECK_EQ(rangeset_add(&rs, UINT64_MAX - 10, UINT64_MAX), 0);
	CHECK(rangeset_contains(&rs, UINT64_MAX - 10, UINT64_MAX));
	CHECK(rangeset_run_end(&rs, UINT64_MAX - 5) == UINT64_MAX);
	CHECK(rangeset_next_present(&rs, 1000) == UINT64_MAX - 10);
	CHECK(well_formed(&rs));
	rangeset_free(&rs);
	CHECK_EQ(rs.n, 0);
}

/* Many disjoint ranges inserted out of order (exercises growth). */
static void test_many(void)
{
	struct rangeset rs = {0};
	for (uint64_t i = 0; i < 1000; i++) {
		uint64_t k = (i * 617) % 1000; /* a permutation of 0..999 */
		CHECK_EQ(rangeset_add(&rs, k * 10, k * 10 + 5), 0);
	}
	CHECK(well_formed(&rs));
	CHECK_EQ(rs.n, 1000);
	CHECK_EQ(rs.total, 5000);
	for (uint64_t k = 0; k < 1000; k++) {
		CHECK(rs.r[k].start == k * 10);
		CHECK(rangeset_next_present(&rs, k * 10 + 5) ==
		      (k + 1 < 1000 ? (k + 1) * 10 : UINT64_MAX));
	}
	/* Fill the gaps: one range. */
	for (uint64_t k = 0; k < 1000; k++)
		CHECK_EQ(rangeset_add(&rs, k * 10 + 5, k * 10 + 10), 0);
	CHECK_EQ(rs.n, 1);
	CHECK_EQ(rs.total, 10000);
	rangeset_free(&rs);
}

#define MB 512

static uint64_t rng_state;
static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

/* One seed: random adds and removes, all queries checked after each. Returns false on
 * the first disagreement (so one bad seed prints a handful of lines). */
static bool random_seed(uint64_t seed)
{
	struct rangeset rs = {0};
	bool bit[MB + 1] = {0};
	bool ok = true;
	rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;

	for (int step = 0; step < 60 && ok; step++) {
		uint64_t a = rnd() % MB, len = rnd() % 4 == 0 ? rnd() % 3 : rnd() % 40;
		uint64_t b = a + len > MB ? MB : a + len;
		/* A third of the steps remove instead of add. */
		bool del = rnd() % 3 == 0;
		if ((del ? rangeset_remove(&rs, a, b) : rangeset_add(&rs, a, b)) != 0) {
			ok = false;
			break;
		}
		for (uint64_t i = a; i < b; i++)
			bit[i] = !del;

		if (!well_formed(&rs)) {
			fprintf(stderr,
			        "seed %llu step %d: malformed after add/remove [%llu,%llu)\n",
			        (unsigned long long)seed, step, (unsigned long long)a,
			        (unsigned long long)b);
			ok = false;
			break;
		}
		uint64_t total = 0;
		for (uint64_t off = 0; off <= MB; off++) {
			total += bit[off];
			uint64_t run = off;
			while (run < MB && bit[run])
				run++;
			uint64_t next = off;
			while (next < MB && !bit[next])
				next++;
			if (next >= MB)
				next = UINT64_MAX;
			if (rangeset_run_end(&rs, off) != run ||
			    rangeset_next_present(&rs, off) != next) {
				fprintf(stderr,
				        "seed %llu step %d off %llu: run_end %llu (want %llu), "
				        "next_present %llu (want %llu)\n",
				        (unsigned long long)seed, step, (unsigned long long)off,
				        (unsigned long long)rangeset_run_end(&rs, off),
				        (unsigned long long)run,
				        (unsigned long long)rangeset_next_present(&rs, off),
				        (unsigned long long)next);
				ok = false;
				break;
			}
		}
		if (ok && total != rs.total) {
			fprintf(stderr, "seed %llu step %d: total %llu, want %llu\n",
			        (unsigned long long)seed, step, (unsigned long long)rs.total,
			        (unsigned long long)total);
			ok = false;
		}
		for (int q = 0; q < 20 && ok; q++) {
			uint64_t qa = rnd() % (MB + 1), qb = qa + rnd() % 50;
			if (qb > MB)
				qb = MB;
			bool want = true;
			for (uint64_t i = qa; i < qb; i++)
				want = want && bit[i];
			if (rangeset_contains(&rs, qa, qb) != want) {
				fprintf(stderr, "seed %llu step %d: contains [%llu,%llu) != %d\n",
				        (unsigned long long)seed, step, (unsigned long long)qa,
				        (unsigned long long)qb, want);
				ok = false;
			}
		}
	}
	rangeset_free(&rs);
	return ok;
}

static void test_random(void)
{
	int bad = 0;
	for (uint64_t seed = 1; seed <= 2000 && bad < 3; seed++) {
		bool ok = random_seed(seed);
		CHECK(ok);
		if (!ok) {
			fprintf(stderr, "test_random: seed %llu failed\n",
			        (unsigned long long)seed);
			bad++;
		}
	}
}

int main(void)
{
	t_init();
	RUN(test_empty);
	RUN(test_merge_cases);
	RUN(test_many);
	RUN(test_random);
	return t_finish("rangeset");
}
