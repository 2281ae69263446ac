/*
 * harness.c - see harness.h. The counters are atomics because checks run
 * on the tests' own threads too (producers, waiters' done() callbacks).
 */
#include "harness.h"

#include "log.h"

#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int passed, failed, tests_skipped;
static _Atomic(const char *) current = "setup";
/* The running test's state: failures when it began, and whether it skipped. */
static int failed_at_begin;
static atomic_bool skipped;

static void on_alarm(int sig)
{
	/* Only async-signal-safe calls here. */
	const char *name = atomic_load(&current);
	static const char a[] = "WATCHDOG: test '";
	static const char b[] = "' hung for 60 s\n";
	ssize_t w = write(STDERR_FILENO, a, sizeof(a) - 1);
	w = write(STDERR_FILENO, name, strlen(name));
	w = write(STDERR_FILENO, b, sizeof(b) - 1);
	(void)w;
	(void)sig;
	_exit(1);
}

void t_check(bool ok, const char *file, int line, const char *fmt, ...)
{
	if (ok) {
		atomic_fetch_add(&passed, 1);
		return;
	}
	atomic_fetch_add(&failed, 1);
	/* One fprintf per part; lines from two threads may interleave, which
	 * is the price of not taking a lock inside a failing check. */
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s:%d: [%s] %s\n", file, line, atomic_load(&current), msg);
}

void t_check_eq(long long a, long long b, const char *sa, const char *sb, const char *file,
                int line)
{
	t_check(a == b, file, line, "CHECK_EQ(%s, %s) failed: %lld != %lld", sa, sb, a, b);
}

void t_check_str(const char *got, const char *want, const char *sgot, const char *swant,
                 const char *file, int line)
{
	bool same = got && want ? strcmp(got, want) == 0 : got == want;
	t_check(same, file, line, "CHECK_STR(%s, %s) failed: got '%s', want '%s'", sgot, swant,
	        got ? got : "(null)", want ? want : "(null)");
}

void t_init(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	/* Failure paths are tested on purpose; their log lines are noise.
	 * A threshold below "error" filters every message. */
	if (!getenv("STREAMFS_TEST_LOG"))
		log_set_level((enum log_level) - 1);
	setvbuf(stdout, NULL, _IOLBF, 0);
}

void t_begin(const char *name)
{
	atomic_store(&current, name);
	failed_at_begin = atomic_load(&failed);
	atomic_store(&skipped, false);
	alarm(60);
}

void t_end(void)
{
	const char *name = atomic_load(&current);
	int f = atomic_load(&failed) - failed_at_begin;
	if (f)
		printf("FAIL %s (%d failed check%s)\n", name, f, f == 1 ? "" : "s");
	else if (!atomic_load(&skipped)) /* t_skip() said SKIP and why */
		printf("ok   %s\n", name);
	atomic_store(&current, "between tests");
}

void t_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("SKIP %s: ", atomic_load(&current));
	vprintf(fmt, ap);
	putchar('\n');
	va_end(ap);
	if (!atomic_exchange(&skipped, true))
		atomic_fetch_add(&tests_skipped, 1);
}

int t_finish(const char *prog)
{
	alarm(0);
	int p = atomic_load(&passed), f = atomic_load(&failed), s = atomic_load(&tests_skipped);
	if (s)
		printf("%s: %d passed, %d failed, %d test%s skipped\n", prog, p, f, s,
		       s == 1 ? "" : "s");
	else
		printf("%s: %d passed, %d failed\n", prog, p, f);
	if (f)
		return 1;
	return s ? T_SKIP_STATUS : 0;
}

char *t_tmpdir(const char *tag)
{
	char *path;
	if (asprintf(&path, "/tmp/streamfs-%s.XXXXXX", tag) < 0 || !mkdtemp(path)) {
		perror("mkdtemp");
		abort();
	}
	return path;
}
