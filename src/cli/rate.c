/*
 * rate.c - sliding-window rates per file name; contract in rate.h.
 *
 * A window is a short ring of (time, bytes) samples: at RATE_SAMPLES, the
 * oldest is overwritten, so an interval shorter than RATE_WINDOW /
 * RATE_SAMPLES only shortens the window. Names are few (one per file of a
 * mount) and looked up linearly; the watcher samples each once a frame.
 */
#include "rate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RATE_SAMPLES 64

struct sample {
	double t;
	uint64_t bytes;
};

struct window {
	char *name;
	double seen;  /* time of the last sample, for rates_prune() */
	size_t first; /* index of the oldest sample in the ring */
	size_t n;     /* samples in the ring */
	struct sample s[RATE_SAMPLES];
};

struct rates {
	struct window **w;
	size_t len, cap;
};

struct rates *rates_new(void)
{
	return calloc(1, sizeof(struct rates));
}

static void window_free(struct window *w)
{
	free(w->name);
	free(w);
}

void rates_free(struct rates *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->len; i++)
		window_free(r->w[i]);
	free(r->w);
	free(r);
}

static struct window *find_or_add(struct rates *r, const char *name)
{
	for (size_t i = 0; i < r->len; i++)
		if (!strcmp(r->w[i]->name, name))
			return r->w[i];
	if (r->len == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 16;
		struct window **w = realloc(r->w, cap * sizeof(*w));
		if (!w)
			return NULL;
		r->w = w;
		r->cap = cap;
	}
	struct window *w = calloc(1, sizeof(*w));
	if (!w || !(w->name = strdup(name))) {
		free(w);
		return NULL;
	}
	r->w[r->len++] = w;
	return w;
}

static struct sample *at(struct window *w, size_t i)
{
	return &w->s[(w->first + i) % RATE_SAMPLES];
}

double rates_sample(struct rates *r, const char *name, double now, uint64_t bytes)
{
	struct window *w = find_or_add(r, name);
	if (!w)
		return -1;
	w->seen = now;
	if (w->n && at(w, w->n - 1)->bytes > bytes)
		w->n = 0; /* removed and added again: a new stream */
	/* Drop samples older than the window, but keep one to measure from. */
	while (w->n > 1 && at(w, 1)->t <= now - RATE_WINDOW) {
		w->first = (w->first + 1) % RATE_SAMPLES;
		w->n--;
	}
	if (w->n == RATE_SAMPLES) {
		w->first = (w->first + 1) % RATE_SAMPLES;
		w->n--;
	}
	*at(w, w->n++) = (struct sample){.t = now, .bytes = bytes};
	const struct sample *old = at(w, 0);
	if (w->n < 2 || now <= old->t)
		return -1;
	return (double)(bytes - old->bytes) / (now - old->t);
}

void rates_prune(struct rates *r, double now)
{
	size_t k = 0;
	for (size_t i = 0; i < r->len; i++) {
		if (r->w[i]->seen == now)
			r->w[k++] = r->w[i];
		else
			window_free(r->w[i]);
	}
	r->len = k;
}

double rate_eta(uint64_t left, double rate)
{
	if (left == 0)
		return 0;
	if (!(rate > 0))
		return -1;
	return (double)left / rate;
}

const char *rate_human(char *buf, size_t size, double bytes)
{
	static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	size_t u = 0;
	while (bytes >= 1024 && u + 1 < sizeof(unit) / sizeof(unit[0])) {
		bytes /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%.0f B", bytes);
	else
		snprintf(buf, size, "%.1f %s", bytes, unit[u]);
	return buf;
}

const char *rate_eta_text(char *buf, size_t size, double seconds)
{
	if (seconds < 0 || isnan(seconds)) {
		snprintf(buf, size, "-");
		return buf;
	}
	if (seconds >= 100 * 3600) {
		snprintf(buf, size, ">99h");
		return buf;
	}
	/* Rounded up: "0:00" only once nothing is left. */
	unsigned long s = (unsigned long)ceil(seconds);
	if (s >= 3600)
		snprintf(buf, size, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(buf, size, "%lu:%02lu", s / 60, s % 60);
	return buf;
}
