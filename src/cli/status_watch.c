/*
 * status_watch.c - "streamfs status --watch [--interval=SECONDS]": a frame
 * per interval with, per file, a bar, the percentage when the size is
 * known, bytes, size, the rate and an ETA, and a TOTAL line; in the
 * spirit of pv and rclone --progress.
 *
 * What this file keeps true:
 * - On a terminal the frame is redrawn in place: the cursor goes back up
 *   over the last frame, each line is rewritten and cleared to its end,
 *   and what is left below is cleared. Lines are cut to the terminal's
 *   width and the frame to its height, so the count of lines to go back
 *   up is exact. The cursor is hidden while watching and shown again on
 *   every way out (end, SIGINT, SIGTERM, an error).
 * - Elsewhere (a pipe, a file) frames are plain lines with no escape
 *   code, each frame followed by an empty line; with --json, a document
 *   per line.
 * - Rates are the client's (rate.h): each frame samples every file once.
 * - It ends by itself once every file has ended (complete, failed,
 *   cancelled), after drawing that last frame; a mount with no file, or
 *   with a file never started, is watched until interrupted.
 * - Text from the daemon is escaped (escape.h), as in the table.
 */
#include "escape.h"
#include "rate.h"
#include "status_int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BAR 20 /* cells inside the brackets */
#define NAME_MAX_W 32

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* This frame's rate and ETA of every file, from its sample. */
static void measure(struct rates *rt, struct rows *rows, double now)
{
	for (size_t i = 0; i < rows->len; i++) {
		struct row *r = &rows->ptr[i];
		uint64_t bytes = strtoull(r->v[BYTES], NULL, 10);
		double rate = rates_sample(rt, r->name, now, bytes);
		/* Only a running stream has a rate: an ended one receives
		 * nothing more, an idle one has not started. */
		r->rate = !strcmp(r->v[STATE], "running") ? rate : -1;
		if (!strcmp(r->v[STATE], "complete"))
			r->eta = 0;
		else if (r->rate >= 0 && r->v[SIZE][0]) {
			uint64_t size = strtoull(r->v[SIZE], NULL, 10);
			r->eta = rate_eta(size > bytes ? size - bytes : 0, r->rate);
		} else
			r->eta = -1;
	}
	rates_prune(rt, now);
}

/* Characters (not bytes) in the UTF-8 string @s. */
static int chars(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

/* @s left-aligned in @w characters: padded, or cut at a character. */
static void cell(FILE *f, const char *s, int w)
{
	int n = 0;
	const char *p = s;
	for (; *p; p++)
		if (((unsigned char)*p & 0xc0) != 0x80 && n++ == w)
			break;
	fwrite(s, 1, (size_t)(p - s), f);
	fprintf(f, "%*s", w - (n < w ? n : w), "");
}

/*
 * The bar: filled to the fraction when the size is known, a "<=>" going
 * back and forth while a stream of unknown size runs (@frame moves it),
 * empty otherwise.
 */
static void bar(FILE *f, uint64_t bytes, const char *size, bool running, unsigned frame)
{
	char b[BAR + 1];
	memset(b, ' ', BAR);
	b[BAR] = '\0';
	if (size[0]) {
		uint64_t total = strtoull(size, NULL, 10);
		int fill = bytes >= total ? BAR : (int)((double)bytes * BAR / (double)total);
		memset(b, '=', (size_t)fill);
		if (fill < BAR && running)
			b[fill] = '>';
	} else if (running) {
		unsigned span = BAR - 3, p = frame % (2 * span);
		p = p < span ? p : 2 * span - p;
		memcpy(b + p, "<=>", 3);
	}
	fprintf(f, "[%s]", b);
}

/* "34%", or "-" without a size. */
static void percent(FILE *f, uint64_t bytes, const char *size)
{
	if (!size[0]) {
		fprintf(f, "%4s", "-");
		return;
	}
	uint64_t total = strtoull(size, NULL, 10);
	unsigned pct = bytes >= total ? 100 : (unsigned)((double)bytes * 100 / (double)total);
	fprintf(f, "%3u%%", pct);
}

/* The columns from STATE on, shared by the files and the TOTAL line. */
static void columns(FILE *f, const char *state, uint64_t bytes, const char *size, double rate,
                    const char *eta, bool running, unsigned frame)
{
	char h1[32], h2[32], h3[32];
	fprintf(f, "  %-9s  ", state);
	bar(f, bytes, size, running, frame);
	fputs("  ", f);
	percent(f, bytes, size);
	fprintf(f, "  %10s  %10s  ", rate_human(h1, sizeof(h1), (double)bytes),
	        size[0] ? rate_human(h2, sizeof(h2), (double)strtoull(size, NULL, 10)) : "-");
	if (rate >= 0) {
		rate_human(h3, sizeof(h3), rate);
		strcat(h3, "/s");
	} else
		strcpy(h3, "-");
	fprintf(f, "%12s  %7s", h3, eta);
}

/*
 * The frame's text into @f: a header, a line per file (at most @max_files
 * of them, then a line saying how many more), the TOTAL line.
 */
static int frame_text(FILE *f, const struct rows *rows, size_t max_files, unsigned frame)
{
	int wn = 5; /* "TOTAL" */
	char **names = calloc(rows->len + 1, sizeof(*names));
	if (!names)
		return -ENOMEM;
	int r = 0;
	for (size_t i = 0; i < rows->len && r == 0; i++) {
		names[i] = esc_text_dup(rows->ptr[i].name);
		if (!names[i])
			r = -ENOMEM;
		else if (chars(names[i]) > wn)
			wn = chars(names[i]);
	}
	wn = wn > NAME_MAX_W ? NAME_MAX_W : wn;
	cell(f, "NAME", wn);
	fprintf(f, "  %-9s  %-*s  %4s  %10s  %10s  %12s  %7s  %s\n", "STATE", BAR + 2, "PROGRESS",
	        "%", "BYTES", "SIZE", "RATE", "ETA", "ERROR");
	size_t shown = rows->len <= max_files ? rows->len : max_files;
	for (size_t i = 0; i < shown && r == 0; i++) {
		const struct row *row = &rows->ptr[i];
		const char *st = row->v[STATE];
		char eta[32];
		char *err = status_error_text(row);
		if (!err) {
			r = -ENOMEM;
			break;
		}
		if (!strcmp(st, "complete"))
			strcpy(eta, "done");
		else
			rate_eta_text(eta, sizeof(eta), row->eta);
		cell(f, names[i], wn);
		columns(f, status_state(row), strtoull(row->v[BYTES], NULL, 10), row->v[SIZE],
		        row->rate, eta, !strcmp(st, "running"), frame);
		fprintf(f, "%s%s\n", err[0] ? "  " : "", err);
		free(err);
	}
	if (r == 0 && shown < rows->len)
		fprintf(f, "... %zu more file%s\n", rows->len - shown,
		        rows->len - shown == 1 ? "" : "s");
	if (r == 0) {
		struct status_total t;
		char st[48], size[32] = "", eta[32];
		status_total(rows, &t);
		snprintf(st, sizeof(st), "%zu/%zu done", t.ended, t.files);
		if (t.sized)
			snprintf(size, sizeof(size), "%llu", (unsigned long long)t.size);
		if (t.files && t.ended == t.files)
			strcpy(eta, t.failed ? "-" : "done");
		else
			rate_eta_text(eta, sizeof(eta), t.eta);
		cell(f, "TOTAL", wn);
		columns(f, st, t.bytes, size, t.rate, eta, t.ended < t.files, frame);
		if (t.failed)
			fprintf(f, "  %zu failed", t.failed);
		fputc('\n', f);
	}
	for (size_t i = 0; i < rows->len; i++)
		free(names[i]);
	free(names);
	return r;
}

/* The terminal's size, or 80x24 when it cannot say. */
static void term_size(int *cols, int *lines)
{
	struct winsize ws;
	*cols = 80;
	*lines = 24;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
		*cols = ws.ws_col;
		*lines = ws.ws_row;
	}
}

/*
 * Draw @text on the terminal over the last frame (@prev lines): each line
 * cut to @cols - 1 characters (a line that filled the width would wrap,
 * and going back up would count wrong). Returns the lines drawn.
 */
static int redraw(const char *text, int prev, int cols)
{
	if (prev > 0)
		printf("\r\033[%dA", prev);
	int n = 0;
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		int c = 0;
		size_t k = 0;
		for (; k < len; k++)
			if (((unsigned char)p[k] & 0xc0) != 0x80 && c++ == cols - 1)
				break;
		fwrite(p, 1, k, stdout);
		fputs("\033[K\n", stdout);
		n++;
		p += len + (nl ? 1 : 0);
	}
	fputs("\033[J", stdout);
	return n;
}

/* Wait @seconds, or less when a signal comes. */
static void pause_for(double seconds)
{
	if (seconds <= 0)
		return;
	struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
	while (!stop_signal && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int status_watch(const char *mnt, bool json, double interval)
{
	bool tty = !json && isatty(STDOUT_FILENO);
	struct rates *rt = rates_new();
	if (!rt) {
		fprintf(stderr, "streamfs: out of memory\n");
		return 1;
	}
	/* No SA_RESTART: the signal ends the pause at once. */
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (tty)
		fputs("\033[?25l", stdout);
	int rc = -1, prev = 0;
	for (unsigned frame = 0; rc < 0 && !stop_signal; frame++) {
		double t0 = now_s();
		struct rows rows = VECTOR_INIT;
		char *c[NCATTR] = {NULL};
		int r = status_read(mnt, &rows, c);
		if (r < 0 || stop_signal) {
			status_free(&rows, c);
			/* Interrupted: the values read may be cut short, so no
			 * frame of them. */
			if (stop_signal)
				break;
			if (tty)
				fputs("\033[?25h", stdout);
			fflush(stdout);
			fprintf(stderr, "streamfs: cannot list '%s': %s\n", mnt, strerror(-r));
			rates_free(rt);
			return 1;
		}
		measure(rt, &rows, t0);
		struct status_total t;
		status_total(&rows, &t);
		if (json) {
			status_print_json(mnt, &rows, c, true);
		} else {
			char *text = NULL;
			size_t len = 0;
			int cols = 0, lines = 0;
			if (tty)
				term_size(&cols, &lines);
			/* Room for the header, the TOTAL line and "... more". */
			size_t max_files = tty && lines > 4 ? (size_t)lines - 4 : (size_t)-1;
			FILE *f = open_memstream(&text, &len);
			r = f ? frame_text(f, &rows, max_files, frame) : -ENOMEM;
			if (f)
				fclose(f);
			if (r == 0 && tty)
				prev = redraw(text, prev, cols);
			else if (r == 0)
				printf("%s\n", text);
			free(text);
		}
		fflush(stdout);
		status_free(&rows, c);
		if (r < 0)
			rc = 1;
		else if (t.files && t.ended == t.files)
			rc = t.failed ? 1 : 0;
		else
			pause_for(interval - (now_s() - t0));
	}
	if (tty)
		fputs("\033[?25h", stdout);
	fflush(stdout);
	rates_free(rt);
	return rc >= 0 ? rc : 128 + stop_signal;
}
