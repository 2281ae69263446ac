/*
 * test_rate.c - the watcher's rates (src/cli/rate.c): a sliding window of
 * samples per name, driven with given times, and the texts it prints.
 */
#include "harness.h"
#include "rate.h"

#include <math.h>
#include <string.h>

static bool near(double a, double b)
{
	return fabs(a - b) < 1e-6 * (fabs(b) + 1);
}

static void test_window(void)
{
	struct rates *r = rates_new();
	CHECK(r);
	/* One sample: no rate yet. */
	CHECK(rates_sample(r, "a", 100.0, 0) == -1);
	/* 1000 bytes a second. */
	CHECK(near(rates_sample(r, "a", 101.0, 1000), 1000));
	CHECK(near(rates_sample(r, "a", 102.0, 2000), 1000));
	/* Names are independent. */
	CHECK(rates_sample(r, "b", 102.0, 5) == -1);
	/* A stall: the window still holds the older samples (100..104). */
	CHECK(near(rates_sample(r, "a", 104.0, 2000), 500));
	/* Beyond RATE_WINDOW the old fast samples leave the window: from 104
	 * (2000) to 110 (2000) nothing came; the sample at 104 is the base. */
	CHECK(near(rates_sample(r, "a", 110.0, 2000), 0));
	/* Speeding up again shows within the window. */
	CHECK(near(rates_sample(r, "a", 111.0, 12000), 10000.0 / 7));
	CHECK(near(rates_sample(r, "a", 112.0, 22000), 20000.0 / 8));
	/* Bytes going down: a new stream under the same name. */
	CHECK(rates_sample(r, "a", 113.0, 10) == -1);
	CHECK(near(rates_sample(r, "a", 114.0, 110), 100));
	/* A name not sampled in a round is forgotten. */
	rates_prune(r, 114.0);
	CHECK(rates_sample(r, "b", 115.0, 50) == -1);
	rates_free(r);
	rates_free(NULL);
}

static void test_many_samples(void)
{
	/* More samples in the window than the ring holds: the oldest go, and
	 * the rate is over what is left. */
	struct rates *r = rates_new();
	double rate = -1;
	for (int i = 0; i <= 1000; i++)
		rate = rates_sample(r, "x", i * 0.001, (uint64_t)i * 10);
	CHECK(near(rate, 10000));
	rates_free(r);
}

static void test_eta_and_text(void)
{
	char b[32];
	CHECK(rate_eta(0, -1) == 0);
	CHECK(rate_eta(100, -1) == -1);
	CHECK(rate_eta(100, 0) == -1);
	CHECK(near(rate_eta(1000, 250), 4));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), -1), "-"));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), 0), "0:00"));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), 6.2), "0:07"));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), 754), "12:34"));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), 3723), "1:02:03"));
	CHECK(!strcmp(rate_eta_text(b, sizeof(b), 1e9), ">99h"));
	CHECK(!strcmp(rate_human(b, sizeof(b), 0), "0 B"));
	CHECK(!strcmp(rate_human(b, sizeof(b), 1023), "1023 B"));
	CHECK(!strcmp(rate_human(b, sizeof(b), 1024), "1.0 KiB"));
	CHECK(!strcmp(rate_human(b, sizeof(b), 34.5 * 1048576), "34.5 MiB"));
	CHECK(!strcmp(rate_human(b, sizeof(b), 3.0 * 1099511627776.0), "3.0 TiB"));
}

int main(void)
{
	t_init();
	RUN(test_window);
	RUN(test_many_samples);
	RUN(test_eta_and_text);
	return t_finish("rate");
}
