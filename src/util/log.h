/*
 * log.h - one logger for the daemon and the engine.
 *
 * Messages go to stderr while in the foreground and to syslog (daemon
 * facility, ident "streamfs") once daemonized. Levels are filtered before
 * formatting, so a disabled debug line costs one comparison. Thread-safe:
 * each message is written with one write()/syslog() call.
 */
#ifndef STREAMFS_LOG_H
#define STREAMFS_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Set the threshold (default INFO). Can't fail. */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
/* Switch to syslog (after daemonizing). Can't fail. */
void log_use_syslog(bool on);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_get_level() >= LOG_LVL_DEBUG)                                              \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                       \
	} while (0)

#endif
