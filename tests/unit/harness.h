/*
 * harness.h - the one harness of the C unit tests: checks, a runner that
 * names each test, a summary and the exit status ctest reads.
 *
 *   int main(void)
 *   {
 *           t_init();
 *           RUN(test_something);      (prints "ok", "FAIL" or "SKIP" and its name)
 *           return t_finish("prog");  (0, 1 on a failed check, 77 if skipped)
 *   }
 *
 * Checks count passes and failures from any thread and print file:line, the
 * running test and, for CHECK_EQ/CHECK_STR, both values. A failed check does
 * not stop the test: later checks still run and report.
 *
 * A test that cannot run here (no permission to mount, say) calls t_skip()
 * and returns. t_finish() then exits 77, which ctest reports as "skipped"
 * when the test is declared with SKIP_RETURN_CODE 77: a program with a
 * test that may skip holds only that test, so nothing that did run is
 * hidden behind the skip.
 *
 * RUN() re-arms a 60 s watchdog (SIGALRM) that prints the test that hung
 * and _exit(1)s, so an engine bug fails the run instead of hanging it.
 * t_init() silences the engine's log unless STREAMFS_TEST_LOG is set
 * (failure paths log by design).
 */
#ifndef STREAMFS_TEST_HARNESS_H
#define STREAMFS_TEST_HARNESS_H

#include <stdbool.h>

/* Exit status for "skipped" (automake's convention, which ctest follows
 * with SKIP_RETURN_CODE). */
#define T_SKIP_STATUS 77

void t_check(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void t_check_eq(long long a, long long b, const char *sa, const char *sb, const char *file,
                int line);
void t_check_str(const char *got, const char *want, const char *sgot, const char *swant,
                 const char *file, int line);

#define CHECK(cond) t_check(!!(cond), __FILE__, __LINE__, "CHECK(%s) failed", #cond)
/* @cond, with a message of its own (printf format) printed on a failure. */
#define CHECK_MSG(cond, ...) t_check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
/* Integers, compared as long long; a failure prints both values. */
#define CHECK_EQ(a, b) t_check_eq((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
/* Strings (NULL allowed: equal only to NULL); a failure prints both. */
#define CHECK_STR(got, want) t_check_str((got), (want), #got, #want, __FILE__, __LINE__)

/* Install the watchdog, silence the engine's log, line-buffer stdout. */
void t_init(void);
/* Name the running test and give it 60 s. */
void t_begin(const char *name);
/* Report the running test: ok, FAIL (with its failed checks) or SKIP. */
void t_end(void);
/* The running test cannot run here: say why; it returns on its own. */
void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "@prog: N passed, M failed[, K skipped]"; return the exit status:
 * 1 if a check failed, else T_SKIP_STATUS if a test skipped, else 0. */
int t_finish(const char *prog);

#define RUN(fn)                                                                                    \
	do {                                                                                       \
		t_begin(#fn);                                                                      \
		fn();                                                                              \
		t_end();                                                                           \
	} while (0)

/* mkdtemp() under /tmp; the caller rmdir()s it and frees the name. Aborts
 * on failure. */
char *t_tmpdir(const char *tag);

#endif
