/*
 * cmd.c - cmd:COMMAND, the stdout of /bin/sh -c COMMAND.
 *
 * The command runs in its own process group with stdin /dev/null, stdout
 * a pipe pumped into the stream, stderr a pipe whose tail we keep for
 * status and the log. It is forked by the loop thread, the thread that
 * lives as long as the daemon, because PR_SET_PDEATHSIG fires when the
 * *thread* that forked dies: a FUSE worker could exit early. Between the
 * daemon and the shell sits a keeper process (see child()) that takes the
 * whole group down if the daemon dies, SIGKILL included.
 *
 * The stream ends when both stdout reached EOF and the shell was reaped
 * (through a pidfd in the same epoll set, so no SIGCHLD handler): exit 0
 * completes it, anything else fails it at the byte where output stopped
 * ("exit 3: last stderr line", "killed by signal 9 (Killed)"). Then the
 * rest of the process group (background jobs the command left) gets
 * SIGTERM, and SIGKILL after a grace period (KILL_GRACE_MS), so nothing
 * the command started outlives its stream by much, and nothing at all
 * outlives the daemon (source_cmd_kill_all()).
 *
 * The keeper is the group leader (pgid == its pid). It is reaped only once
 * the group has had its SIGKILL: until then its pid, zombie or not, cannot
 * be reused, so a kill(-pgid) never reaches a stranger's group. Its exit
 * status is read with WNOWAIT when it exits.
 *
 * Cancel (rm, unmount): SIGTERM to the group and the same grace period; a
 * stream that has ended already (in its grace period) gets SIGKILL at once.
 *
 * The shell starts with what streamfs itself was started with: the
 * original RLIMIT_NOFILE (the daemon raises its own), default signal
 * dispositions and an empty signal mask.
 */
#include "streamfs/source.h"

#include "log.h"
#include "sources.h"
#include "streamfs/store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KILL_GRACE_MS 2000 /* from SIGTERM to SIGKILL of a command's group */
#define ERR_TAIL 2048      /* bytes of stderr kept */
#define ERR_LOG_LINES 50   /* stderr lines logged per command, then silence */

struct cmd_src {
	struct ioloop *loop;
	struct stream *s;
	char *command;
	char *cwd;

	/* loop thread only */
	pid_t pid; /* the keeper: 0 before the fork and after reaping */
	int pidfd;
	struct ioloop_watch pid_watch, err_watch;
	int errfd;
	struct fd_pump out;
	bool out_done, exited, cancelled;
	bool active; /* spawned, and the stream's end not reported yet */
	bool termed; /* the group had its SIGTERM; kill_timer brings the SIGKILL */
	int out_err; /* read error on stdout, 0 if none */
	siginfo_t status;
	struct ioloop_timer kill_timer;
	char tail[ERR_TAIL]; /* last bytes of stderr */
	size_t tail_len;
	unsigned lines_logged;
	char line[512]; /* the stderr line being assembled for the log */
	size_t line_len;

	LIST_ENTRY(cmd_src) live_link; /* protected by live_lock; listed iff live_pgid > 0 */
	pid_t live_pgid;               /* protected by live_lock */
};

/*
 * Process groups that may still have members that were not SIGKILLed, for
 * source_cmd_kill_all(). A group leaves the list when it gets its SIGKILL.
 */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static LIST_HEAD(, cmd_src) live = LIST_HEAD_INITIALIZER(live); /* protected by live_lock */

/* What commands get back before exec (see source_cmd_set_nofile()). */
static struct rlimit child_nofile;
static bool child_nofile_set;

void source_cmd_set_nofile(const struct rlimit *rl)
{
	child_nofile = *rl;
	child_nofile_set = true;
}

static void live_add(struct cmd_src *c, pid_t pgid)
{
	source_mutex_lock(&live_lock);
	c->live_pgid = pgid;
	LIST_INSERT_HEAD(&live, c, live_link);
	source_mutex_unlock(&live_lock);
}

/* Unlink @c (listed); live_lock held. */
static void live_unlink(struct cmd_src *c)
{
	LIST_REMOVE(c, live_link);
	c->live_pgid = 0;
}

/*
 * Send @sig to what is left of @c's group, if it is still listed; SIGKILL
 * ends its listing, 0 only forgets it. Returns true if it was listed.
 */
static bool live_signal(struct cmd_src *c, int sig)
{
	source_mutex_lock(&live_lock);
	bool listed = c->live_pgid > 0;
	if (listed && sig)
		kill(-c->live_pgid, sig);
	if (listed && (sig == SIGKILL || sig == 0))
		live_unlink(c);
	source_mutex_unlock(&live_lock);
	return listed;
}

static bool live_listed(struct cmd_src *c)
{
	source_mutex_lock(&live_lock);
	bool listed = c->live_pgid > 0;
	source_mutex_unlock(&live_lock);
	return listed;
}

void source_cmd_kill_all(void)
{
	source_mutex_lock(&live_lock);
	struct cmd_src *c;
	while ((c = LIST_FIRST(&live))) {
		kill(-c->live_pgid, SIGKILL);
		live_unlink(c);
	}
	source_mutex_unlock(&live_lock);
}

/* ---- stderr ----------------------------------------------------------- */

static void log_line(struct cmd_src *c)
{
	if (c->line_len == 0)
		return;
	c->line[c->line_len] = '\0';
	if (c->lines_logged < ERR_LOG_LINES)
		log_info("%s: stderr: %s", stream_name(c->s), c->line);
	else if (c->lines_logged == ERR_LOG_LINES)
		log_info("%s: further stderr output is not logged", stream_name(c->s));
	c->lines_logged++;
	c->line_len = 0;
}

static void take_stderr(struct cmd_src *c, const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n')
			log_line(c);
		else if (c->line_len < sizeof(c->line) - 1)
			c->line[c->line_len++] = buf[i];
	}
	if (n >= ERR_TAIL) {
		memcpy(c->tail, buf + n - ERR_TAIL, ERR_TAIL);
		c->tail_len = ERR_TAIL;
	} else {
		size_t keep = c->tail_len + n > ERR_TAIL ? ERR_TAIL - n : c->tail_len;
		memmove(c->tail, c->tail + c->tail_len - keep, keep);
		memcpy(c->tail + keep, buf, n);
		c->tail_len = keep + n;
	}
}

static void drain_stderr(struct cmd_src *c)
{
	assert(ioloop_in_loop(c->loop));
	char buf[4096];
	for (;;) {
		ssize_t n = read(c->errfd, buf, sizeof(buf));
		if (n > 0) {
			take_stderr(c, buf, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || errno != EAGAIN) {
			ioloop_del(c->loop, &c->err_watch);
			close(c->errfd);
			c->errfd = -1;
		}
		return;
	}
}

static void err_event(struct ioloop_watch *w, uint32_t events)
{
	drain_stderr(w->data);
}

/* The last non-empty line of stderr, for the error message. */
static void last_line(const struct cmd_src *c, char *out, size_t size)
{
	size_t end = c->tail_len;
	while (end > 0 && (c->tail[end - 1] == '\n' || c->tail[end - 1] == '\r'))
		end--;
	size_t start = end;
	while (start > 0 && c->tail[start - 1] != '\n')
		start--;
	size_t n = end - start < size - 1 ? end - start : size - 1;
	memcpy(out, c->tail + start, n);
	out[n] = '\0';
}

/* ---- end of the command ----------------------------------------------- */

/* The group had its SIGKILL (or nothing to kill): reap the keeper and let
 * go of the stream. May free @c. */
static void reap(struct cmd_src *c)
{
	assert(ioloop_in_loop(c->loop));
	ioloop_timer_disarm(c->loop, &c->kill_timer);
	if (c->pid > 0) {
		while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR)
			;
		c->pid = 0;
	}
	source_drop(c->s);
}

/*
 * The stream's end is reported: what is left of the group (background
 * jobs) gets SIGTERM, unless a cancel sent it already, and SIGKILL when
 * kill_timer fires. A group that had its SIGKILL is done with. May free @c.
 */
static void settle(struct cmd_src *c)
{
	if (c->termed ? live_listed(c) : live_signal(c, SIGTERM)) {
		if (!c->termed) {
			c->termed = true;
			ioloop_timer_arm(c->loop, &c->kill_timer, KILL_GRACE_MS);
		}
		return;
	}
	reap(c);
}

static void finish(struct cmd_src *c)
{
	assert(ioloop_in_loop(c->loop));
	if (!c->active || !c->out_done || !c->exited)
		return;
	c->active = false;
	if (c->errfd >= 0) {
		drain_stderr(c);
		if (c->errfd >= 0) {
			ioloop_del(c->loop, &c->err_watch);
			close(c->errfd);
			c->errfd = -1;
		}
	}
	log_line(c);

	char line[256], tail[300] = "";
	last_line(c, line, sizeof(line));
	if (line[0])
		snprintf(tail, sizeof(tail), ": %s", line);
	size_t tl = c->tail_len;
	while (tl > 0 && c->tail[tl - 1] == '\n')
		tl--;
	if (tl)
		stream_set_attr(c->s, "stderr", "%.*s", (int)tl, c->tail);

	int code = c->status.si_status;
	if (c->status.si_code == CLD_EXITED) {
		stream_set_attr(c->s, "exit_status", "%d", code);
		if (c->cancelled)
			; /* the stream is CANCELLED already */
		else if (c->out_err)
			stream_fail(c->s, c->out_err, "reading the command's output: %s",
			            strerror(c->out_err));
		else if (code == 0)
			stream_end(c->s);
		else
			stream_fail(c->s, EIO, "exit %d%s", code, tail);
	} else {
		stream_set_attr(c->s, "exit_status", "%d", 128 + code);
		if (!c->cancelled)
			stream_fail(c->s, EIO, "killed by signal %d (%s)%s", code, strsignal(code),
			            tail);
	}
	settle(c);
}

static void out_done(struct fd_pump *p, int err)
{
	struct cmd_src *c = p->data;
	c->out_done = true;
	if (err && err != ECANCELED)
		c->out_err = err;
	finish(c);
}

static void pid_event(struct ioloop_watch *w, uint32_t events)
{
	struct cmd_src *c = w->data;
	assert(ioloop_in_loop(c->loop));
	memset(&c->status, 0, sizeof(c->status));
	/* WNOWAIT: the keeper is reaped only after its group's SIGKILL. */
	if (waitid(P_PID, (id_t)c->pid, &c->status, WEXITED | WNOHANG | WNOWAIT) < 0 ||
	    c->status.si_pid == 0)
		return; /* not yet (spurious) */
	ioloop_del(c->loop, &c->pid_watch);
	close(c->pidfd);
	c->pidfd = -1;
	c->exited = true;
	if (c->cancelled && !c->out_done) {
		fd_pump_stop(&c->out);
		c->out_done = true;
	}
	finish(c);
}

/* The grace period is over: SIGKILL whatever is left of the group. */
static void kill_timer_fired(struct ioloop_timer *t)
{
	struct cmd_src *c = t->data;
	assert(ioloop_in_loop(c->loop));
	if (!c->exited)
		log_warn("%s: command ignored SIGTERM, sending SIGKILL", stream_name(c->s));
	live_signal(c, SIGKILL);
	if (!c->active && c->pid > 0)
		reap(c); /* else the keeper dies of it, and finish() reaps it */
}

/* ---- start and cancel ------------------------------------------------- */

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* The keeper's answer to the daemon's death: the whole group goes. */
static void keeper_orphaned(int sig)
{
	kill(0, SIGKILL);
}

/* The shell, between fork and exec: async-signal-safe calls only. */
static void run_shell(struct cmd_src *c, int out_w, int err_w)
{
	/* Ignored signals stay ignored across exec, and the mask and limits
	 * are inherited: give the command default dispositions (libfuse
	 * ignores SIGPIPE, and "yes | head" needs it; the keeper ignores
	 * SIGTERM; whoever started streamfs may have ignored SIGQUIT), an
	 * empty mask, and the fd limit streamfs was started with. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL, SIGSTOP, libc's own */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (child_nofile_set)
		setrlimit(RLIMIT_NOFILE, &child_nofile);
	int devnull = open("/dev/null", O_RDONLY);
	if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
		_exit(126);
	syscall(SYS_close_range, 3, ~0U, 0);
	if (c->cwd && chdir(c->cwd) < 0) {
		static const char msg[] = "streamfs: cannot enter the working directory\n";
		ssize_t w = write(2, msg, sizeof(msg) - 1);
		(void)w;
		_exit(126);
	}
	execl("/bin/sh", "sh", "-c", c->command, (char *)NULL);
	_exit(127);
}

/*
 * The forked child is the group's keeper, not the shell: PR_SET_PDEATHSIG
 * reaches only a direct child, so a shell alone would die with the daemon
 * while its own children lived on. The keeper forks the shell into the
 * same group, waits for it and exits the same way; if the daemon dies
 * first (even by SIGKILL), the kernel signals the keeper, which kills the
 * whole group. It ignores SIGTERM so that a cancel's SIGTERM reaches the
 * command while the keeper stays to report how it ended. Async-signal-safe
 * calls only: this is a fork of a multithreaded process.
 */
static void child(struct cmd_src *c, int out_w, int err_w, pid_t parent)
{
	setpgid(0, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = keeper_orphaned;
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	prctl(PR_SET_PDEATHSIG, SIGUSR1);
	if (getppid() != parent)
		_exit(127); /* the daemon died before we could ask to follow it */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	pid_t sh = fork();
	if (sh < 0)
		_exit(126);
	if (sh == 0)
		run_shell(c, out_w, err_w);
	/* The keeper holds no descriptor: stdout's EOF must come from the
	 * command alone. */
	syscall(SYS_close_range, 0, ~0U, 0);
	int st;
	while (waitpid(sh, &st, 0) < 0)
		if (errno != EINTR)
			_exit(126);
	if (WIFEXITED(st))
		_exit(WEXITSTATUS(st));
	int sig = WTERMSIG(st);
	signal(sig, SIG_DFL);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, sig);
	sigprocmask(SIG_UNBLOCK, &one, NULL);
	kill(getpid(), sig);
	_exit(128 + sig);
}

static void spawn(void *arg)
{
	struct cmd_src *c = arg;
	assert(ioloop_in_loop(c->loop));
	int out[2] = {-1, -1}, err[2] = {-1, -1};
	const char *what = "pipe";

	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		goto fail;
	/* Larger pipe: fewer wake-ups at high rates (best effort). */
	fcntl(out[0], F_SETPIPE_SZ, 1 << 20);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);

	what = "fork";
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		goto fail;
	if (pid == 0)
		child(c, out[1], err[1], parent);
	setpgid(pid, pid); /* also here: no window where a kill(-pgid) misses */
	close(out[1]);
	close(err[1]);
	out[1] = err[1] = -1;
	c->pid = pid;
	live_add(c, pid);
	log_debug("%s: started pid %d: %s", stream_name(c->s), (int)pid, c->command);

	what = "pidfd_open";
	c->pidfd = pidfd_open_(pid);
	if (c->pidfd < 0)
		goto fail_child;
	c->pid_watch = (struct ioloop_watch){.fd = c->pidfd, .cb = pid_event, .data = c};
	c->err_watch = (struct ioloop_watch){.fd = err[0], .cb = err_event, .data = c};
	c->errfd = err[0];
	err[0] = -1;
	what = "epoll";
	if (ioloop_add(c->loop, &c->pid_watch, EPOLLIN) < 0 ||
	    ioloop_add(c->loop, &c->err_watch, EPOLLIN) < 0)
		goto fail_child;
	c->active = true;
	int fd = out[0];
	out[0] = -1;
	if (fd_pump_start(&c->out, c->loop, c->s, fd, out_done, c) < 0) {
		c->out_done = true;
		c->out_err = EIO;
	}
	return;

fail_child:
	/* The child exists but we cannot watch it: kill and reap it here. */
	live_signal(c, SIGKILL);
	waitpid(pid, NULL, 0);
	c->pid = 0;
	if (c->pidfd >= 0) {
		close(c->pidfd);
		c->pidfd = -1;
	}
	if (c->errfd >= 0) {
		ioloop_del(c->loop, &c->err_watch);
		close(c->errfd);
		c->errfd = -1;
	}
fail:;
	int e = errno;
	for (int i = 0; i < 2; i++) {
		if (out[i] >= 0)
			close(out[i]);
		if (err[i] >= 0)
			close(err[i]);
	}
	stream_fail(c->s, e, "cannot start the command: %s: %s", what, strerror(e));
	source_drop(c->s);
}

static void cancel_in_loop(void *arg)
{
	struct cmd_src *c = arg;
	assert(ioloop_in_loop(c->loop));
	struct stream *s = c->s;
	if (c->active && !c->cancelled) {
		c->cancelled = true;
		if (!c->out_done) {
			fd_pump_stop(&c->out);
			c->out_done = true;
		}
		if (!c->termed && live_signal(c, SIGTERM)) {
			c->termed = true;
			ioloop_timer_arm(c->loop, &c->kill_timer, KILL_GRACE_MS);
		}
		finish(c);
	} else if (!c->active && c->pid > 0) {
		/* The stream has ended and its group is in its grace period: the
		 * file is going away, so what is left goes now. */
		live_signal(c, SIGKILL);
		reap(c);
	}
	stream_unref(s); /* the ref of this call */
}

static int cmd_start(struct stream *s, void *src)
{
	struct cmd_src *c = src;
	return source_start_in_loop(s, c->loop, spawn, c); /* taken until the keeper is reaped */
}

static void cmd_cancel(struct stream *s, void *src)
{
	struct cmd_src *c = src;
	if (source_call_in_loop(s, c->loop, cancel_in_loop, c) < 0)
		live_signal(
		    c, SIGKILL); /* the loop is gone (shutdown): just make sure the group dies */
}

static void resume_in_loop(void *arg)
{
	struct cmd_src *c = arg;
	struct stream *s = c->s;
	if (c->active && !c->out_done)
		fd_pump_resume(&c->out);
	stream_unref(s); /* the ref of this call */
}

/* Room in the store again after a pause: read the command's output. */
static void cmd_resume(struct stream *s, void *src)
{
	struct cmd_src *c = src;
	stream_ref(s);
	if (ioloop_call(c->loop, resume_in_loop, c) < 0)
		stream_unref(s);
}

static void cmd_destroy(void *src)
{
	struct cmd_src *c = src;
	live_signal(c, 0);
	free(c->command);
	free(c->cwd);
	free(c);
}

static const struct stream_source_ops cmd_ops = {
    .kind = "cmd",
    .start = cmd_start,
    .cancel = cmd_cancel,
    .destroy = cmd_destroy,
    .resume = cmd_resume,
};

struct stream *source_cmd_new(struct ioloop *loop, const char *name, const char *command,
                              const char *cwd, struct store *store)
{
	struct cmd_src *c = calloc(1, sizeof(*c));
	if (!c || !(c->command = strdup(command)) || (cwd && !(c->cwd = strdup(cwd)))) {
		if (c)
			free(c->command);
		free(c);
		store_close(store);
		errno = ENOMEM;
		return NULL;
	}
	c->loop = loop;
	c->pidfd = -1;
	c->errfd = -1;
	c->out.fd = -1;
	c->kill_timer.cb = kill_timer_fired;
	c->kill_timer.data = c;
	struct stream *s = stream_new(name, store, &cmd_ops, c);
	if (s)
		c->s = s;
	return s;
}
