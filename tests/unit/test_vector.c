/*
 * test_vector.c - unit tests for vector.h: growth keeps the elements,
 * insert/remove move the rest, and a growth that would overflow fails
 * with ENOMEM and leaves the vector as it was.
 */
#include "harness.h"
#include "vector.h"

#include <stdint.h>
#include <stdio.h>

DEFINE_VECTOR(intvec, int);

struct big {
	char bytes[1 << 20];
};
DEFINE_VECTOR(bigvec, struct big);

static void test_push_and_grow(void)
{
	struct intvec v = VECTOR_INIT;
	for (int i = 0; i < 10000; i++)
		CHECK(intvec_push(&v, i) == 0);
	CHECK(v.len == 10000 && v.cap >= 10000);
	int ok = 1;
	for (int i = 0; i < 10000; i++)
		ok &= v.ptr[i] == i;
	CHECK(ok);
	intvec_free(&v);
	CHECK(v.ptr == NULL && v.len == 0 && v.cap == 0);
}

static void test_insert_remove(void)
{
	struct intvec v = VECTOR_INIT;
	CHECK(intvec_push(&v, 1) == 0);
	CHECK(intvec_push(&v, 3) == 0);
	CHECK(intvec_insert(&v, 1, 2) == 0);
	CHECK(intvec_insert(&v, 0, 0) == 0);
	CHECK(intvec_insert(&v, 4, 4) == 0);
	CHECK(v.len == 5);
	for (int i = 0; i < 5; i++)
		CHECK(v.ptr[i] == i);
	intvec_remove(&v, 0);
	intvec_remove(&v, 3);
	CHECK(v.len == 3 && v.ptr[0] == 1 && v.ptr[1] == 2 && v.ptr[2] == 3);
	intvec_free(&v);
}

static void test_overflow_leaves_vector_unchanged(void)
{
	struct bigvec v = VECTOR_INIT;
	errno = 0;
	CHECK(bigvec_reserve(&v, SIZE_MAX / 2) == -1);
	CHECK(errno == ENOMEM);
	CHECK(v.ptr == NULL && v.len == 0 && v.cap == 0);

	struct intvec w = VECTOR_INIT;
	CHECK(intvec_push(&w, 7) == 0);
	int *before = w.ptr;
	size_t cap = w.cap;
	errno = 0;
	CHECK(intvec_reserve(&w, SIZE_MAX) == -1 && errno == ENOMEM);
	CHECK(w.ptr == before && w.cap == cap && w.len == 1 && w.ptr[0] == 7);
	intvec_free(&w);
}

int main(void)
{
	t_init();
	RUN(test_push_and_grow);
	RUN(test_insert_remove);
	RUN(test_overflow_leaves_vector_unchanged);
	return t_finish("vector");
}
