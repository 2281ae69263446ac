/*
 * status.h - "streamfs status [--json] [--watch] MOUNTPOINT": a table (or
 * JSON) of every file in a mount, read from the user.streamfs.* extended
 * attributes. Reading them starts no stream and never waits, so status is
 * safe on a mount where every reader is stuck.
 */
#ifndef STREAMFS_STATUS_H
#define STREAMFS_STATUS_H

/* argv[0] is "status". Returns the process exit code. */
int status_main(int argc, char **argv);

#endif
