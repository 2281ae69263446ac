/*
 * source.h - the producers that feed streams.
 *
 * Each constructor returns a new IDLE stream (one reference, owned by the
 * caller) whose source is of that kind, or NULL with errno set. It takes
 * ownership of @store in every case. Nothing runs until stream_start().
 * All source work happens in the loop thread of @loop.
 *
 * Sources know nothing of the command line: each takes its own arguments
 * (a URL source its struct url_opts), and the caller translates.
 */
#ifndef STREAMFS_SOURCE_H
#define STREAMFS_SOURCE_H

#include "streamfs/ioloop.h"
#include "streamfs/stream.h"

#include <stdbool.h>
#include <stddef.h>

/* ---- cmd:COMMAND -------------------------------------------------------- */

/* The stdout of /bin/sh -c COMMAND, run in @cwd (NULL: as is) in its own
 * process group, stdin /dev/null. */
struct stream *source_cmd_new(struct ioloop *loop, const char *name, const char *command,
                              const char *cwd, struct store *store);

/* Daemon shutdown: SIGKILL every command process group still alive. Safe
 * from any thread; idempotent. */
void source_cmd_kill_all(void);

/* Start-up, before any command runs: the RLIMIT_NOFILE commands get back
 * before exec (the one streamfs was started with; the daemon raises its
 * own). Without it they inherit the daemon's. */
struct rlimit;
void source_cmd_set_nofile(const struct rlimit *rl);

/* ---- pipe:PATH and stdin ------------------------------------------------ */

/* A FIFO or any file, read sequentially; opened at start, off the loop
 * thread (an open may block). A @path that leads into @mountpoint
 * (canonical; NULL: no check) fails the stream instead. */
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

/* "-": an already open descriptor (streamfs's saved stdin). Takes @fd. */
struct stream *source_stdin_new(struct ioloop *loop, const char *name, int fd, struct store *store);

/* ---- http(s)/ftp(s) URLs ------------------------------------------------ */

/* How a URL source fetches. Times are in seconds. */
struct persist_entry;
struct url_opts {
	char **headers; /* "Name: value" request headers, @nheaders of them */
	size_t nheaders;
	char *userpwd;         /* "user:password", or NULL */
	bool netrc;            /* look the host up in ~/.netrc */
	char *netrc_file;      /* another netrc file (absolute), or NULL */
	bool insecure;         /* no TLS verification */
	bool location_trusted; /* headers and credentials follow redirects anywhere */
	bool ondemand;         /* fetch only what is read (else download it all) */
	int retries;           /* retries after a drop, a stall or a retryable status */
	double retry_time;     /* ...all within this long */
	double stall_timeout;  /* no byte for this long is a stall */
	double connect_timeout;
	int max_redirs;
	char *proxy;   /* every request through this http(s) proxy; NULL: libcurl's
	                * choice from http_proxy, https_proxy, ALL_PROXY */
	char *noproxy; /* hosts reached directly (libcurl's NOPROXY); NULL: NO_PROXY */
	struct persist_entry *persist; /* the persistent cache's entry (persist.h), or
	                                * NULL; not owned */
	char *aws_sigv4; /* CURLOPT_AWS_SIGV4 ("aws:amz:REGION:s3") with userpwd, or NULL */
	bool path_as_is; /* send the path as given (S3 keys may hold "..") */
	char *fail_msg;  /* the stream fails with this (EIO) when it starts, or NULL */
};

/* http(s)/ftp(s) URL through libcurl. @opts is copied. */
struct stream *source_url_new(struct ioloop *loop, const char *name, const char *url,
                              const struct url_opts *opts, struct store *store);

/* Deep copy of @src into @dst (every string copied). Returns 0, or -1
 * (ENOMEM) with @dst zeroed. */
int source_url_opts_copy(struct url_opts *dst, const struct url_opts *src);

/* Free the strings of a copy and zero it. NULL is fine. */
void source_url_opts_free(struct url_opts *o);

/* @url without user:password (for status and logs). Returns a malloc'ed
 * string ("(unparsable URL)" if it does not parse), or NULL (ENOMEM). */
char *source_url_redact(const char *url);

/* Do @a and @b have the same scheme, host and port (the port a scheme
 * implies when none is given)? Credentials given for a file go only where
 * this holds, as curl does. False if either does not parse. */
bool source_url_same_origin(const char *a, const char *b);

/* -vv: libcurl's verbose output (headers and its notes, credentials
 * redacted) goes to the log at debug level. Any thread; default off. */
void source_url_set_verbose(bool on);

/* Process-wide setup/teardown of libcurl (call once each from main). */
int source_url_global_init(void);
void source_url_global_cleanup(void);

/* ---- every source ------------------------------------------------------- */

/*
 * Shutdown: wait until every source has let go of its stream (a command
 * reaped, a transfer ended), at most @timeout_ms. Any thread. Returns
 * true if none holds one.
 */
bool source_wait_all_done(unsigned timeout_ms);

/*
 * Daemon shutdown (shutdown.c): cancel each of @streams (NULL-terminated;
 * NULL: none) with @why, SIGKILL every command process group still alive,
 * and wait at most @timeout_ms for every source to let go of its stream.
 * Returns true if all did. Not from the loop thread (it waits for it).
 */
bool sources_shutdown(struct stream *const *streams, const char *why, unsigned timeout_ms);

#endif
