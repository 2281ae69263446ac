/*
 * xpthread.h - pthread calls that cannot fail in a correct program, checked.
 *
 * A lock, unlock, init or destroy that returns an error (EDEADLK, EPERM
 * from an unlock by a thread that does not hold the lock, EINVAL from a
 * destroyed lock, EAGAIN from too many readers) means the program is
 * wrong: running on would be running without the exclusion the code
 * counts on. These wrappers say which call failed, where, and abort.
 *
 *   xpthread_mutex_lock(&l->lock);    instead of pthread_mutex_lock()
 *
 * Header only, so any layer can use it; nothing here allocates or logs
 * through the logger (which may itself hold a lock).
 */
#ifndef STREAMFS_XPTHREAD_H
#define STREAMFS_XPTHREAD_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noreturn, cold)) static inline void xpthread_fail_(const char *call, int err,
                                                                  const char *file, int line)
{
	fprintf(stderr, "streamfs: %s:%d: %s failed: %s\n", file, line, call, strerror(err));
	abort();
}

/* Evaluate the pthread call @call once; abort if it returns non-zero. */
#define XPTHREAD_CHECK(call)                                                                       \
	do {                                                                                       \
		int xpthread_err_ = (call);                                                        \
		if (xpthread_err_ != 0)                                                            \
			xpthread_fail_(#call, xpthread_err_, __FILE__, __LINE__);                  \
	} while (0)

#define xpthread_mutex_init(m, attr) XPTHREAD_CHECK(pthread_mutex_init((m), (attr)))
#define xpthread_mutex_destroy(m) XPTHREAD_CHECK(pthread_mutex_destroy(m))
#define xpthread_mutex_lock(m) XPTHREAD_CHECK(pthread_mutex_lock(m))
#define xpthread_mutex_unlock(m) XPTHREAD_CHECK(pthread_mutex_unlock(m))

#define xpthread_rwlock_init(l, attr) XPTHREAD_CHECK(pthread_rwlock_init((l), (attr)))
#define xpthread_rwlock_destroy(l) XPTHREAD_CHECK(pthread_rwlock_destroy(l))
#define xpthread_rwlock_rdlock(l) XPTHREAD_CHECK(pthread_rwlock_rdlock(l))
#define xpthread_rwlock_wrlock(l) XPTHREAD_CHECK(pthread_rwlock_wrlock(l))
#define xpthread_rwlock_unlock(l) XPTHREAD_CHECK(pthread_rwlock_unlock(l))

#define xpthread_cond_init(c, attr) XPTHREAD_CHECK(pthread_cond_init((c), (attr)))
#define xpthread_cond_destroy(c) XPTHREAD_CHECK(pthread_cond_destroy(c))
#define xpthread_cond_signal(c) XPTHREAD_CHECK(pthread_cond_signal(c))
#define xpthread_cond_broadcast(c) XPTHREAD_CHECK(pthread_cond_broadcast(c))
#define xpthread_cond_wait(c, m) XPTHREAD_CHECK(pthread_cond_wait((c), (m)))

#define xpthread_once(o, fn) XPTHREAD_CHECK(pthread_once((o), (fn)))
#define xpthread_key_create(k, dtor) XPTHREAD_CHECK(pthread_key_create((k), (dtor)))

#endif
