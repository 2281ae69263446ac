/*
 * test_xpthread.c - unit tests for xpthread.h: checked calls that succeed
 * behave like the plain ones, and one that fails (unlocking an
 * error-checking mutex nobody holds) says which call failed and aborts,
 * in a child process.
 */
#include "xpthread.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			failed++;                                                                  \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);   \
		}                                                                                  \
	} while (0)

static void test_success(void)
{
	pthread_mutex_t m;
	pthread_rwlock_t l;
	xpthread_mutex_init(&m, NULL);
	xpthread_mutex_lock(&m);
	CHECK(pthread_mutex_trylock(&m) != 0); /* held */
	xpthread_mutex_unlock(&m);
	CHECK(pthread_mutex_trylock(&m) == 0);
	xpthread_mutex_unlock(&m);
	xpthread_mutex_destroy(&m);
	xpthread_rwlock_init(&l, NULL);
	xpthread_rwlock_rdlock(&l);
	xpthread_rwlock_rdlock(&l);
	CHECK(pthread_rwlock_trywrlock(&l) != 0); /* two readers */
	xpthread_rwlock_unlock(&l);
	xpthread_rwlock_unlock(&l);
	xpthread_rwlock_wrlock(&l);
	xpthread_rwlock_unlock(&l);
	xpthread_rwlock_destroy(&l);
}

static void test_failure_aborts(void)
{
	int out[2];
	CHECK(pipe(out) == 0);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		dup2(out[1], 2);
		pthread_mutexattr_t a;
		pthread_mutex_t m;
		pthread_mutexattr_init(&a);
		pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
		pthread_mutex_init(&m, &a);
		xpthread_mutex_unlock(&m); /* EPERM: not held */
		_exit(0);                  /* not reached */
	}
	close(out[1]);
	char msg[16384]; /* TSan may report the bad unlock first */
	size_t len = 0;
	ssize_t n;
	while (len < sizeof(msg) - 1 && (n = read(out[0], msg + len, sizeof(msg) - 1 - len)) > 0)
		len += (size_t)n;
	msg[len] = '\0';
	close(out[0]);
	int st = 0;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
	CHECK(strstr(msg, "streamfs: ") != NULL);
	CHECK(strstr(msg, "test_xpthread.c:") != NULL);
	CHECK(strstr(msg, "pthread_mutex_unlock(&m) failed: ") != NULL);
}

int main(void)
{
	test_success();
	test_failure_aborts();
	if (failed) {
		fprintf(stderr, "%d check(s) failed\n", failed);
		return 1;
	}
	printf("xpthread: ok\n");
	return 0;
}
