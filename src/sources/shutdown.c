/*
 * shutdown.c - how the daemon stops its sources: every stream cancelled
 * (its source hears of it and lets go), every command process group
 * killed, then a bounded wait until no source holds a stream. See
 * source.h.
 *
 * The FUSE layer only answers its parked requests and unmounts
 * (fs_shutdown); this is the policy for what runs behind the files.
 */
#include "streamfs/source.h"

#include <stddef.h>

bool sources_shutdown(struct stream *const *streams, const char *why, unsigned timeout_ms)
{
	/* Waiters still parked on a stream get -ECANCELED. */
	for (size_t i = 0; streams && streams[i]; i++)
		stream_cancel(streams[i], why);
	/* After the cancels: a command whose stream was cancelled may already
	 * be on its way out; the rest of its group (background jobs) is not. */
	source_cmd_kill_all();
	return source_wait_all_done(timeout_ms);
}
