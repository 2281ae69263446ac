/*
 * log.c - see log.h. The level is an atomic so that any thread may read it
 * without a lock; a message is formatted into a local buffer and written in
 * one call so lines from different threads never interleave.
 *
 * Messages carry text from outside (a command's standard error, a
 * server's ETag or redirect target, file names): it is escaped here, once
 * for every caller, so no terminal escape or stray line break reaches a
 * terminal or syslog as it is.
 */
#include "log.h"

#include "escape.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static atomic_int cur_level = LOG_LVL_INFO;
static atomic_bool to_syslog;

void log_set_level(enum log_level lvl)
{
	atomic_store(&cur_level, (int)lvl);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load_explicit(&cur_level, memory_order_relaxed);
}

void log_use_syslog(bool on)
{
	if (on)
		openlog("streamfs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	atomic_store(&to_syslog, on);
}

void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char raw[2048], msg[4096];

	if ((int)lvl > atomic_load_explicit(&cur_level, memory_order_relaxed))
		return;
	vsnprintf(raw, sizeof(raw), fmt, ap);
	esc_text(msg, sizeof(msg), raw, strlen(raw));
	if (atomic_load(&to_syslog)) {
		syslog(prio[lvl], "%s", msg);
		return;
	}

	char line[4200];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld streamfs %s: %s\n", tm.tm_hour,
	                 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[lvl], msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w; /* nowhere left to report a failed log write */
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(lvl, fmt, ap);
	va_end(ap);
}
