/*
 * control.h - the control socket behind "streamfs add" and "streamfs rm".
 *
 * The daemon listens on an abstract Unix socket (no file to clean up; it
 * disappears with the process) whose name it shows on the mount root as
 * user.streamfs.control. A client connects, sends one request and shuts
 * down its side; the daemon answers one line, "ok" or "error: ...", and
 * closes. Only root and the user running the daemon are served
 * (SO_PEERCRED), and the client, in turn, sends only to a socket whose
 * listener is root or the caller: a request may carry credentials.
 *
 * Request: fields separated by NUL bytes: "add", "NAME=SOURCE", then
 * "OPTION=VALUE"...; or "rm", "NAME". At most 256 KiB. A client must send
 * its whole request within 5 s of connecting, or it is dropped; at most 32
 * are served at once. The daemon never blocks on a client.
 *
 * All work happens in the loop thread.
 */
#ifndef STREAMFS_CONTROL_H
#define STREAMFS_CONTROL_H

#include "streamfs/ioloop.h"

#include <stddef.h>

struct control;

/* What a request does; both return 0 or -1 with @err set. */
struct control_ops {
	int (*add)(void *ctx, const char *spec, char *const *opts, size_t nopts, char *err,
	           size_t errlen);
	int (*rm)(void *ctx, const char *name, char *err, size_t errlen);
	void *ctx;
};

/* Listen (call before the loop starts or from the loop thread). Writes the
 * socket's printable name ("@streamfs-PID-N") to @name. Returns NULL with
 * errno set. */
struct control *control_open(struct ioloop *loop, const struct control_ops *ops, char *name,
                             size_t namelen);

/* Start serving: registers with the loop. Loop thread only. */
void control_start(void *c);

/* Stop and free (loop stopped, or from the loop thread). NULL is fine. */
void control_close(struct control *c);

/*
 * Client side: send one request to the daemon behind @mountpoint and print
 * its answer. Returns the exit code (0 ok, 1 refused, 2 bad usage).
 */
int control_client(const char *mountpoint, const char *const *fields, size_t nfields);

#endif
