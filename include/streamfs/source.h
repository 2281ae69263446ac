/*
 * source.h - the producers that feed streams, and the fd pump they share.
 *
 * Each constructor returns a new IDLE stream (one reference, owned by the
 * caller) whose source is of that kind, or NULL with errno set. It takes
 * ownership of @store in every case. Nothing runs until stream_start().
 * All source work happens in the loop thread of @loop.
 */
#ifndef STREAMFS_SOURCE_H
#define STREAMFS_SOURCE_H

#include "config.h"
#include "streamfs/ioloop.h"
#include "streamfs/stream.h"

/* cmd:COMMAND - stdout of /bin/sh -c COMMAND, run in @cwd (NULL: as is)
 * in its own process group, stdin /dev/null. */
struct stream *source_cmd_new(struct ioloop *loop, const char *name, const char *command,
			      const char *cwd, struct store *store);

/* pipe:PATH - a FIFO or any file, read sequentially; opened at start, off
 * the loop thread (an open may block). A @path that leads into
 * @mountpoint (canonical; NULL: no check) fails the stream instead. */
struct stream *source_pipe_new(struct ioloop *loop, const char *name, const char *path,
			       const char *mountpoint, struct store *store);

/*
 * Does the absolute @path lead to @mountpoint (canonical) or below it?
 * pipe: paths there would have the daemon open its own files and wait on
 * itself. Without @resolve this is by name only ("." and ".." resolved, no
 * file system access: safe on the loop thread). With @resolve, symlinks in
 * the existing part of @path are followed first, which may block.
 */
bool source_path_inside(const char *path, const char *mountpoint, bool resolve);

/* "-" - an already open descriptor (streamfs's saved stdin). Takes @fd. */
struct stream *source_stdin_new(struct ioloop *loop, const char *name, int fd,
				struct store *store);

/* http(s)/ftp(s) URL through libcurl. @opts is copied. */
struct stream *source_url_new(struct ioloop *loop, const char *name, const char *url,
			      const struct file_opts *opts, struct store *store);

/* @url without user:password (for status and logs). Returns a malloc'ed
 * string, or NULL (ENOMEM). */
char *source_url_redact(const char *url);

/* Do @a and @b have the same scheme, host and port (the port a scheme
 * implies when none is given)? Credentials given for a file go only where
 * this holds, as curl does. False if either does not parse. */
bool source_url_same_origin(const char *a, const char *b);

/* Daemon shutdown: SIGKILL every command process group still alive. Safe
 * from any thread; idempotent. */
void source_cmd_kill_all(void);

/* Start-up, before any command runs: the RLIMIT_NOFILE commands get back
 * before exec (the one streamfs was started with; the daemon raises its
 * own). Without it they inherit the daemon's. */
struct rlimit;
void source_cmd_set_nofile(const struct rlimit *rl);

/* Process-wide setup/teardown of libcurl (call once each from main). */
int source_url_global_init(void);
void source_url_global_cleanup(void);

/*
 * The fd pump: moves bytes from a descriptor into a stream at its
 * sequential frontier, in the loop thread. Descriptors epoll can watch
 * (pipes, FIFOs, ttys, sockets) are read when readable; others (regular
 * files, /dev/null) in bounded steps queued with ioloop_call(), so one big
 * file never starves the loop. on_done() is called once, in the loop
 * thread, when the pump stops by itself: err 0 at end of file, ECANCELED
 * when the stream stopped running (cancelled, or failed by its store), or
 * the read error (positive errno). It is not called after fd_pump_stop().
 */
struct fd_pump {
	struct ioloop_watch watch;
	struct ioloop *loop;
	struct stream *s;
	int fd;
	bool nonblock; /* fd is O_NONBLOCK: read until EAGAIN, else once per event */
	bool polled;   /* in epoll (else stepped) */
	bool running;
	bool paused;   /* no room in the store: not reading until resumed */
	void (*on_done)(struct fd_pump *p, int err);
	void *data;
};

/* Start pumping @fd (owned by the pump from now on; closed when it
 * stops). Loop thread only. Returns 0 or -errno (then @fd is closed). */
int fd_pump_start(struct fd_pump *p, struct ioloop *loop, struct stream *s, int fd,
		  void (*on_done)(struct fd_pump *p, int err), void *data);

/* The stream got room again after a pause (stream_fill_fd said
 * -ENOBUFS): read again. Loop thread only; a no-op if not paused. */
void fd_pump_resume(struct fd_pump *p);

/* Stop without calling on_done and close the fd. Loop thread only;
 * idempotent. */
void fd_pump_stop(struct fd_pump *p);

/*
 * Book-keeping of running sources, so shutdown can wait for them to let go
 * of their streams: source_take() is stream_ref() for a source that starts
 * producing, source_drop() its stream_unref() when it is done.
 */
void source_take(struct stream *s);
void source_drop(struct stream *s);
/* Wait until no source holds a stream, at most @timeout_ms. Returns true
 * if none does. */
bool source_wait_all_done(unsigned timeout_ms);

#endif
