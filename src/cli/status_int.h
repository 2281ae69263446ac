/*
 * status_int.h - what status.c ("streamfs status") and status_watch.c
 * ("streamfs status --watch") share: a row per file, read from its
 * user.streamfs.* attributes, and the printers both use.
 */
#ifndef STREAMFS_STATUS_INT_H
#define STREAMFS_STATUS_INT_H

#include "vector.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The attributes a row shows, user.streamfs.KEY for each key below. */
enum attr {
	STATE,
	BYTES,
	SIZE,
	SOURCE,
	ERROR,
	ERROR_OFFSET,
	EXIT_STATUS,
	HTTP_CODE,
	HELD, /* the store budget's, from here on */
	EVICTED,
	DROPPED,
	KEEP,
	PAUSED,
	NATTR
};

/* The root's budget attributes (user.streamfs.cache_KEY), shown as
 * "cache": {KEY: ...} in JSON and as a line under the table. */
enum cattr { C_SIZE, C_USED, C_MIN_FREE, C_EVICTIONS, C_PAUSED, NCATTR };

/* Every string is malloc'ed; a value is "" when the attribute is absent. */
struct row {
	char *name; /* relative to the mount point, as bytes */
	char *v[NATTR];
	/* Measured by the watcher (rate.h); -1 for null. */
	double rate; /* bytes/s */
	double eta;  /* seconds until complete */
};

DEFINE_VECTOR(rows, struct row);

/*
 * Every file under @mnt into @rows (sorted by name, rate and eta -1 but
 * for complete files, whose eta is 0), the root's cache_* attributes into
 * @c. Touches the mount only with directory reads and getxattr. Returns 0
 * or a negative errno; free with status_free() either way.
 */
int status_read(const char *mnt, struct rows *rows, char **c);
void status_free(struct rows *rows, char **c);

/* The state a user sees: "paused" for a running stream that waits for
 * room in the store, else the state attribute. */
const char *status_state(const struct row *r);

/* The error column: the error (escaped, "at byte N"), "(why paused)", or
 * "". malloc'ed; NULL on ENOMEM. */
char *status_error_text(const struct row *r);

/* The JSON document, with "rate", "eta" per file and a "total"; on one
 * line when @compact (--watch --json: a document per line). */
void status_print_json(const char *mnt, const struct rows *rows, char *const *c, bool compact);

/* The mount as a whole. */
struct status_total {
	size_t files, ended, failed; /* ended: complete, failed or cancelled */
	uint64_t bytes;              /* the sum of every file's */
	uint64_t size;               /* the sum of their sizes, when @sized */
	bool sized;                  /* every file has a size (a failed one: its bytes) */
	double rate;                 /* sum of the rates measured; -1 if none */
	double eta;                  /* of the last file to complete; -1 unknown */
};

/* Sum up @rows (their rate and eta as measured). Can't fail. */
void status_total(const struct rows *rows, struct status_total *t);

/*
 * "status --watch": a frame every @interval seconds until every file has
 * ended or SIGINT/SIGTERM; see status_watch.c. Returns the exit code: 0
 * when every file completed, 1 when one failed or the mount went away,
 * 128 + the signal when interrupted (130 for Ctrl-C).
 */
int status_watch(const char *mnt, bool json, double interval);

#endif
