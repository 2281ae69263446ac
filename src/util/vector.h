/*
 * vector.h - a growable array with checked growth, the one way this code
 * base holds a variable number of things.
 *
 *   DEFINE_VECTOR(strvec, char *);
 *   struct strvec v = VECTOR_INIT;
 *   if (strvec_push(&v, s) < 0) ... ENOMEM or overflow, v unchanged ...
 *   for (size_t i = 0; i < v.len; i++) ... v.ptr[i] ...
 *   strvec_free(&v);             frees the array, not what it points to
 *
 * Growth doubles the capacity (at least 8 elements) and fails with -1 and
 * errno ENOMEM, leaving the vector as it was, when the new size in bytes
 * would overflow size_t or the allocation fails. Nothing here locks: a
 * vector is guarded by whatever guards the struct that holds it.
 */
#ifndef STREAMFS_VECTOR_H
#define STREAMFS_VECTOR_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VECTOR_INIT                                                                                \
	{                                                                                          \
		.ptr = NULL, .len = 0, .cap = 0                                                    \
	}

/* Make room for @n more elements of @elem bytes in *ptr (capacity *cap,
 * length @len). Returns 0, or -1 with errno ENOMEM and nothing changed. */
static inline int vector_reserve_(void **ptr, size_t *cap, size_t len, size_t n, size_t elem)
{
	if (n <= *cap - len)
		return 0;
	if (n > SIZE_MAX / elem - len) {
		errno = ENOMEM;
		return -1;
	}
	size_t want = len + n;
	size_t ncap = *cap < 8 ? 8 : *cap;
	while (ncap < want)
		ncap = ncap > SIZE_MAX / 2 / elem ? want : ncap * 2;
	void *p = realloc(*ptr, ncap * elem);
	if (!p) {
		errno = ENOMEM;
		return -1;
	}
	*ptr = p;
	*cap = ncap;
	return 0;
}

#define DEFINE_VECTOR(name, type)                                                                  \
	struct name {                                                                              \
		type *ptr;                                                                         \
		size_t len, cap;                                                                   \
	};                                                                                         \
	__attribute__((unused)) static inline int name##_reserve(struct name *v, size_t n)         \
	{                                                                                          \
		void *p = v->ptr;                                                                  \
		int r = vector_reserve_(&p, &v->cap, v->len, n, sizeof(type));                     \
		v->ptr = p;                                                                        \
		return r;                                                                          \
	}                                                                                          \
	__attribute__((unused)) static inline int name##_push(struct name *v, type x)              \
	{                                                                                          \
		if (name##_reserve(v, 1) < 0)                                                      \
			return -1;                                                                 \
		v->ptr[v->len++] = x;                                                              \
		return 0;                                                                          \
	}                                                                                          \
	/* Insert @x at @i (<= len), moving the rest up. */                                        \
	__attribute__((unused)) static inline int name##_insert(struct name *v, size_t i, type x)  \
	{                                                                                          \
		if (name##_reserve(v, 1) < 0)                                                      \
			return -1;                                                                 \
		memmove(&v->ptr[i + 1], &v->ptr[i], (v->len - i) * sizeof(type));                  \
		v->ptr[i] = x;                                                                     \
		v->len++;                                                                          \
		return 0;                                                                          \
	}                                                                                          \
	/* Remove the element at @i (< len), moving the rest down. */                              \
	__attribute__((unused)) static inline void name##_remove(struct name *v, size_t i)         \
	{                                                                                          \
		memmove(&v->ptr[i], &v->ptr[i + 1], (v->len - i - 1) * sizeof(type));              \
		v->len--;                                                                          \
	}                                                                                          \
	__attribute__((unused)) static inline void name##_free(struct name *v)                     \
	{                                                                                          \
		free(v->ptr);                                                                      \
		v->ptr = NULL;                                                                     \
		v->len = v->cap = 0;                                                               \
	}                                                                                          \
	struct name

#endif
