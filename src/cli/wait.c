/*
 * wait.c - "streamfs wait": block until streams end. Contract in wait.h.
 *
 * How, and what this file keeps true:
 * - Nothing polls. Each NAME gets a thread that opens the file (which
 *   starts an idle stream) and calls lseek(SEEK_END), which streamfs
 *   answers once the stream has ended, or with EIO once it failed (S6).
 *   All the streams run at once, and the answer comes when they end.
 * - The main thread waits for the threads with a deadline. Past it, or
 *   as soon as one stream failed, it reports and the process exits; the
 *   exit ends the calls still waiting (the kernel interrupts them and
 *   streamfs unparks their requests), and the streams go on.
 * - The verdict comes from the file's user.streamfs.* attributes, which
 *   start and wait for nothing. What they say reaches the terminal
 *   escaped (a command's error text can hold anything).
 */
#include "wait.h"

#include "config.h"
#include "escape.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define EXIT_TIMEOUT 124 /* as timeout(1) */

static const char wait_usage[] = "usage: streamfs wait [--timeout SECONDS] MOUNTPOINT NAME...";

/* One file waited for. The fields after @path are under the lock. */
struct target {
	const char *name;
	const char *mnt;
	char path[PATH_MAX];
	pthread_t thread;
	bool started;
	bool done;         /* the thread's calls have returned */
	bool failed;       /* ... and the stream did not complete */
	char verdict[600]; /* why, once failed: "failed at byte N: ..." */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed;

/* user.streamfs.@key of @path, escaped into @buf; "" when absent, or
 * with errno set when the file cannot be asked. */
static const char *attr(const char *path, const char *key, char *buf, size_t size)
{
	char name[64], raw[512];
	snprintf(name, sizeof(name), "user.streamfs.%s", key);
	ssize_t n = getxattr(path, name, raw, sizeof(raw) - 1);
	if (n < 0 && errno == ERANGE) /* longer than any error text: show its start */
		n = 0;
	raw[n < 0 ? 0 : n] = '\0';
	esc_text(buf, size, raw, strlen(raw));
	return buf;
}

/* Why the state of @t cannot be read: the mount or the file went away. */
static void explain_gone(struct target *t, int err)
{
	char pid[32];
	int e = errno;
	if (getxattr(t->mnt, "user.streamfs.pid", pid, sizeof(pid)) < 0)
		snprintf(t->verdict, sizeof(t->verdict), "the mount went away (%s)",
		         strerror(err ? err : errno));
	else if (e == ENOENT)
		snprintf(t->verdict, sizeof(t->verdict), "removed from the mount");
	else
		snprintf(t->verdict, sizeof(t->verdict), "%s", strerror(err ? err : e));
}

/* Why @t's stream is not complete, into t->verdict; false if it is.
 * @err is what the calls on it returned (0: none failed). */
static bool explain(struct target *t, int err)
{
	char state[32], at[32], why[400];
	errno = 0;
	attr(t->path, "state", state, sizeof(state));
	if (!state[0] && errno && errno != ENODATA) {
		explain_gone(t, err);
		return true;
	}
	if (!strcmp(state, "complete"))
		return false;
	attr(t->path, "error_offset", at, sizeof(at));
	attr(t->path, "error", why, sizeof(why));
	if (!strcmp(state, "failed") || !strcmp(state, "cancelled"))
		snprintf(t->verdict, sizeof(t->verdict), "%s at byte %s: %s", state, at, why);
	else
		snprintf(t->verdict, sizeof(t->verdict), "%s", strerror(err ? err : EIO));
	return true;
}

static void *wait_one(void *arg)
{
	struct target *t = arg;
	int err = 0;
	int fd = open(t->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		err = errno;
	else if (lseek(fd, 0, SEEK_END) < 0)
		err = errno;
	if (fd >= 0)
		close(fd);
	pthread_mutex_lock(&lock);
	t->failed = explain(t, err);
	t->done = true;
	pthread_cond_signal(&changed);
	pthread_mutex_unlock(&lock);
	return NULL;
}

/* The options; returns -1 to go on, or the exit code. */
static int parse_wait_args(int argc, char **argv, double *timeout)
{
	static const struct option longopts[] = {
	    {"timeout", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	char q[80];
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		if (c == 'h') {
			puts(wait_usage);
			return 0;
		}
		if (c == 't' && (config_parse_seconds(optarg, timeout) < 0 || *timeout <= 0)) {
			esc_text(q, sizeof(q), optarg, strlen(optarg));
			fprintf(stderr,
			        "streamfs: bad --timeout value '%s': expected seconds above 0 "
			        "(e.g. 30 or 2.5)\n",
			        q);
			return 2;
		}
		if (c != 't') {
			fprintf(stderr, "streamfs: %s\n", wait_usage);
			return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr, "streamfs: %s\n", wait_usage);
		return 2;
	}
	return -1;
}

/* @mnt is a streamfs mount and each name a file in it; 0, or the exit
 * code after one line on stderr. Asks only attributes: starts nothing. */
static int check_targets(const char *mnt, struct target *t, size_t n)
{
	char pid[32], v[32], q[300];
	if (getxattr(mnt, "user.streamfs.pid", pid, sizeof(pid)) < 0) {
		fprintf(stderr, "streamfs: '%s' is not a streamfs mount: %s\n", mnt,
		        errno == ENODATA || errno == ENOTSUP ? "no streamfs attributes"
		                                             : strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		char err[300];
		esc_text(q, sizeof(q), t[i].name, strlen(t[i].name));
		if (config_validate_name(t[i].name, err, sizeof(err)) < 0) {
			fprintf(stderr, "streamfs: %s\n", err);
			return 2;
		}
		if ((size_t)snprintf(t[i].path, sizeof(t[i].path), "%s/%s", mnt, t[i].name) >=
		    sizeof(t[i].path)) {
			fprintf(stderr, "streamfs: '%s': %s\n", q, strerror(ENAMETOOLONG));
			return 2;
		}
		if (getxattr(t[i].path, "user.streamfs.state", v, sizeof(v)) >= 0)
			continue;
		if (errno == ENOENT)
			fprintf(stderr, "streamfs: no file named '%s'\n", q);
		else if (errno == ENODATA)
			fprintf(stderr, "streamfs: '%s' is a directory\n", q);
		else
			fprintf(stderr, "streamfs: '%s': %s\n", q, strerror(errno));
		return 1;
	}
	return 0;
}

/* Start a thread per target, with small stacks: they only wait. */
static int start_all(struct target *t, size_t n)
{
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 64 * 1024);
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		r = pthread_create(&t[i].thread, &a, wait_one, &t[i]);
		t[i].started = r == 0;
	}
	pthread_attr_destroy(&a);
	if (r)
		fprintf(stderr, "streamfs: cannot wait for %zu files: %s\n", n, strerror(r));
	return r ? 1 : 0;
}

/* Wait until every target is done, one failed, or @timeout (seconds, < 0
 * for none) ran out. Under the lock. */
static void wait_all(struct target *t, size_t n, double timeout)
{
	struct timespec end;
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += (time_t)timeout;
	end.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
	if (end.tv_nsec >= 1000000000L) {
		end.tv_sec++;
		end.tv_nsec -= 1000000000L;
	}
	for (;;) {
		size_t done = 0;
		for (size_t i = 0; i < n; i++) {
			if (t[i].done && t[i].failed)
				return;
			done += t[i].done;
		}
		if (done == n)
			return;
		if (timeout < 0)
			pthread_cond_wait(&changed, &lock);
		else if (pthread_cond_timedwait(&changed, &lock, &end) == ETIMEDOUT)
			return;
	}
}

/* One line per file that failed, or (if none did) that is not done.
 * Returns the exit code. Under the lock. */
static int report(struct target *t, size_t n, double timeout)
{
	char q[300], bytes[32], paused[100];
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		if (!t[i].done || !t[i].failed)
			continue;
		esc_text(q, sizeof(q), t[i].name, strlen(t[i].name));
		fprintf(stderr, "streamfs: %s: %s\n", q, t[i].verdict);
		rc = 1;
	}
	for (size_t i = 0; i < n && rc != 1; i++) {
		if (t[i].done)
			continue;
		esc_text(q, sizeof(q), t[i].name, strlen(t[i].name));
		attr(t[i].path, "bytes", bytes, sizeof(bytes));
		attr(t[i].path, "paused", paused, sizeof(paused)); /* the store budget */
		fprintf(stderr, "streamfs: %s: still running after %g s (%s bytes so far%s%s)\n", q,
		        timeout, bytes[0] ? bytes : "0", paused[0] ? "; paused: " : "", paused);
		rc = EXIT_TIMEOUT;
	}
	return rc;
}

int wait_main(int argc, char **argv)
{
	double timeout = -1;
	int rc = parse_wait_args(argc, argv, &timeout);
	if (rc >= 0)
		return rc;
	const char *mnt = argv[optind];
	size_t n = (size_t)(argc - optind - 1);
	struct target *t = calloc(n, sizeof(*t));
	if (!t) {
		fprintf(stderr, "streamfs: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		t[i].name = argv[optind + 1 + (int)i];
		t[i].mnt = mnt;
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&changed, &ca);
	pthread_condattr_destroy(&ca);
	rc = check_targets(mnt, t, n);
	if (rc == 0)
		rc = start_all(t, n);
	pthread_mutex_lock(&lock);
	if (rc == 0) {
		wait_all(t, n, timeout);
		rc = report(t, n, timeout);
	}
	pthread_mutex_unlock(&lock);
	/* Threads still in their calls are ended by exit(); t stays theirs. */
	bool all_done = true;
	for (size_t i = 0; i < n; i++)
		all_done &= !t[i].started || t[i].done;
	for (size_t i = 0; all_done && i < n; i++)
		if (t[i].started)
			pthread_join(t[i].thread, NULL);
	if (all_done)
		free(t);
	return rc;
}
