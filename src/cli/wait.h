/*
 * wait.h - "streamfs wait [--timeout SECONDS] MOUNTPOINT NAME...": block
 * until the named streams have ended, so that a script can copy them
 * whole next (streamfs wait mnt a.bin && rsync mnt/a.bin dst/).
 *
 * Waiting starts a stream that has not started: whoever waits for it
 * wants its bytes. Exit status: 0 when every stream completed; 1 as soon
 * as one failed or was cancelled (one line per such file on stderr,
 * "streamfs: a.bin: failed at byte N: exit 3: ...") or when the mount or
 * a name is not there; 124 when SECONDS ran out first (as timeout(1)),
 * with one line per unfinished file; 2 on bad usage.
 */
#ifndef STREAMFS_WAIT_H
#define STREAMFS_WAIT_H

/* argv[0] is "wait". Returns the process exit code. */
int wait_main(int argc, char **argv);

#endif
