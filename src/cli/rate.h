/*
 * rate.h - transfer rates and ETAs for "streamfs status --watch", measured
 * by the client over a sliding window of its own samples.
 *
 * Why the client and not the daemon: the daemon keeps no clock per
 * stream, and a rate it computed would need history it only has if
 * someone samples it anyway; the watcher samples every interval, so it
 * keeps the history itself, and the daemon's hot path stays as it is. A
 * single "streamfs status" has one sample, so no rate (null).
 *
 * The rate of a file is (bytes now - bytes then) / (now - then), where
 * "then" is the oldest sample within RATE_WINDOW seconds (or, with a long
 * interval, the sample before this one): recent enough to follow a
 * change of speed, long enough not to jump with each interval's luck.
 * Nothing here touches the file system or the clock: times are given,
 * so the unit tests drive it.
 */
#ifndef STREAMFS_RATE_H
#define STREAMFS_RATE_H

#include <stddef.h>
#include <stdint.h>

#define RATE_WINDOW 5.0 /* seconds */

struct rates;

/* An empty set of windows, one per file name. NULL on ENOMEM. */
struct rates *rates_new(void);
void rates_free(struct rates *r);

/*
 * Record that file @name held @bytes at time @now (seconds, monotonic,
 * increasing from call to call). Returns the rate in bytes/s over the
 * window, or -1 when unknown (the first sample of a name, or memory ran
 * out). Bytes that went down (the name was removed and added again)
 * start the window afresh.
 */
double rates_sample(struct rates *r, const char *name, double now, uint64_t bytes);

/* Forget the names not sampled at @now (removed files). */
void rates_prune(struct rates *r, double now);

/*
 * Seconds left for @left bytes at @rate bytes/s: -1 when unknown (no rate,
 * or nothing arriving). Can't fail.
 */
double rate_eta(uint64_t left, double rate);

/* "0 B", "999 B", "1.0 KiB", "34.5 MiB" into @buf. Returns @buf. */
const char *rate_human(char *buf, size_t size, double bytes);

/* "0:07", "12:34", "1:02:03"; "-" for -1, ">99h" beyond. Returns @buf. */
const char *rate_eta_text(char *buf, size_t size, double seconds);

#endif
