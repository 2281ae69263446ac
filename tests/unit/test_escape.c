/*
 * test_escape.c - unit tests for escape.c: strict UTF-8 decoding, the
 * escaping of text for people (status table, log) and the JSON string
 * writer (status --json).
 *
 * Besides fixed cases, every string of one and two bytes and many random
 * longer ones are checked for the properties the callers rely on: the
 * output is valid UTF-8 with no control byte (C0, DEL, C1) in it, and a
 * result cut to a small buffer is a prefix of the whole one.
 */
#include "escape.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *text(const char *s)
{
	static char buf[1024];
	esc_text(buf, sizeof(buf), s, strlen(s));
	return buf;
}

static char *json(const char *s)
{
	static char buf[1024];
	esc_json(buf, sizeof(buf), s, strlen(s));
	return buf;
}

static void test_utf8(void)
{
	uint32_t cp = 0;
	CHECK(utf8_decode((const unsigned char *)"A", 1, &cp) == 1 && cp == 'A');
	CHECK(utf8_decode((const unsigned char *)"\xc3\xa9", 2, &cp) == 2 && cp == 0xe9);
	CHECK(utf8_decode((const unsigned char *)"\xe2\x82\xac", 3, &cp) == 3 && cp == 0x20ac);
	CHECK(utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp) == 4 && cp == 0x1f600);
	CHECK(utf8_decode((const unsigned char *)"\xf4\x8f\xbf\xbf", 4, &cp) == 4 &&
	      cp == 0x10ffff);
	/* Not UTF-8: a lone Latin-1 byte, continuation bytes, overlong forms,
	 * surrogates, past U+10FFFF, truncated sequences. */
	const char *bad[] = {"\xe9",
	                     "\x80",
	                     "\xbf",
	                     "\xc0\xaf",
	                     "\xc1\xbf",
	                     "\xe0\x80\xaf",
	                     "\xe0\x9f\xbf",
	                     "\xf0\x8f\xbf\xbf",
	                     "\xed\xa0\x80",
	                     "\xed\xbf\xbf",
	                     "\xf4\x90\x80\x80",
	                     "\xf5\x80\x80\x80",
	                     "\xff",
	                     "\xe2\x82",
	                     "\xc3\x41" /* 0x41 is 'A', not a continuation */};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(utf8_decode((const unsigned char *)bad[i], strlen(bad[i]), &cp) == 0);
	CHECK(utf8_valid("caf\xc3\xa9", 5));
	CHECK(!utf8_valid("caf\xe9", 4));
	CHECK(utf8_valid("", 0));
	/* The length given counts, not a NUL. */
	CHECK(!utf8_valid("\xe2\x82\xac", 2));
}

static void test_text(void)
{
	CHECK_STR(text("plain ascii, 100%"), "plain ascii, 100%");
	CHECK_STR(text("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");
	CHECK_STR(text("\x1b[2Jboom"), "\\x1b[2Jboom");
	CHECK_STR(text("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
	CHECK_STR(text("a\nb\tc\rd"), "a\\x0ab\\x09c\\x0dd");
	CHECK_STR(text("del\x7f"), "del\\x7f");
	CHECK_STR(text("caf\xe9"), "caf\\xe9");
	/* C1 controls (U+009B is CSI) are escaped byte by byte. */
	CHECK_STR(text("\xc2\x9b"
	               "2J"),
	          "\\xc2\\x9b2J");
	CHECK_STR(text("\xc2\xa0"), "\xc2\xa0"); /* U+00A0 is printable */
	CHECK_STR(text("\xe0\x80\xaf"), "\\xe0\\x80\\xaf");
	CHECK_STR(text("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");
	CHECK_STR(text("back\\slash"), "back\\slash");
	CHECK_STR(text(""), "");
}

static void test_json(void)
{
	CHECK_STR(json("plain"), "\"plain\"");
	CHECK_STR(json(""), "\"\"");
	CHECK_STR(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
	CHECK_STR(json("l1\nl2\tx\r"), "\"l1\\nl2\\tx\\u000d\"");
	CHECK_STR(json("\x1b[2J\x1b]0;t\x07"), "\"\\u001b[2J\\u001b]0;t\\u0007\"");
	CHECK_STR(json("\x7f"), "\"\\u007f\"");
	CHECK_STR(json("\xc2\x9b"), "\"\\u009b\"");
	CHECK_STR(json("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
	CHECK_STR(json("caf\xe9"), "\"caf\\ufffd\"");
	/* One replacement per invalid byte. */
	CHECK_STR(json("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");
	CHECK_STR(json("\xe2\x82"), "\"\\ufffd\\ufffd\"");
	CHECK_STR(json("\xf0\x9f\x98\x80!"), "\"\xf0\x9f\x98\x80!\"");
}

static void test_sizes(void)
{
	char buf[64];
	/* The length needed, whatever the room. */
	CHECK(esc_text(NULL, 0, "\x1b[2J", 4) == 7);
	CHECK(esc_json(NULL, 0, "\x1b", 1) == 8);
	/* Cut: whole escapes and characters only, NUL-terminated. */
	memset(buf, 'Z', sizeof(buf));
	CHECK(esc_text(buf, 5, "\x1b[2J", 4) == 7);
	CHECK_STR(buf, "\\x1b");
	CHECK(esc_text(buf, 4, "\x1b[2J", 4) == 7);
	CHECK_STR(buf, "");
	CHECK(esc_text(buf, 4, "ab\xc3\xa9", 4) == 4);
	CHECK_STR(buf, "ab");
	CHECK(esc_json(buf, 3, "abc", 3) == 5);
	CHECK_STR(buf, "\"a");
	CHECK(esc_json(buf, 6, "abc", 3) == 5);
	CHECK_STR(buf, "\"abc\"");
	/* Embedded NUL bytes are data when a length is given. */
	CHECK(esc_text(buf, sizeof(buf), "a\0b", 3) == 6);
	CHECK_STR(buf, "a\\x00b");
	char *d = esc_text_dup("x\x1b");
	CHECK(d && strcmp(d, "x\\x1b") == 0);
	free(d);
	d = esc_json_dup("caf\xe9");
	CHECK(d && strcmp(d, "\"caf\\ufffd\"") == 0);
	free(d);
}

/* The output is valid UTF-8 with no C0, DEL or C1 in it. */
static bool safe(const char *s, size_t n)
{
	if (!utf8_valid(s, n))
		return false;
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
		if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)
			return false;
	}
	return true;
}

static void check_one(const char *in, size_t n)
{
	char out[256], cut[256];
	size_t (*fns[2])(char *, size_t, const char *, size_t) = {esc_text, esc_json};
	for (int f = 0; f < 2; f++) {
		size_t len = fns[f](out, sizeof(out), in, n);
		bool ok = len < sizeof(out) && strlen(out) == len && safe(out, len);
		CHECK_MSG(ok, "unsafe or wrong length (%s) for input of %zu bytes",
		          f ? "json" : "text", n);
		if (!ok)
			return;
		size_t room = 1 + (size_t)rand() % (len + 1);
		fns[f](cut, room, in, n);
		CHECK_MSG(strncmp(cut, out, strlen(cut)) == 0 && strlen(cut) < room &&
		              safe(cut, strlen(cut)),
		          "bad cut (%s) at %zu", f ? "json" : "text", room);
	}
}

static void test_properties(void)
{
	unsigned char in[16];
	for (unsigned a = 0; a < 256; a++) {
		in[0] = (unsigned char)a;
		check_one((const char *)in, 1);
		for (unsigned b = 0; b < 256; b++) {
			in[1] = (unsigned char)b;
			check_one((const char *)in, 2);
		}
	}
	srand(42);
	for (int i = 0; i < 200000; i++) {
		size_t n = 1 + (size_t)rand() % sizeof(in);
		for (size_t j = 0; j < n; j++) {
			/* Mostly bytes that make or break UTF-8 sequences. */
			static const unsigned char pick[] = {0x00, 0x1b, 0x07, 0x22, 0x41, 0x5c,
			                                     0x7f, 0x80, 0x9b, 0xbf, 0xc2, 0xc3,
			                                     0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xff};
			in[j] = rand() % 3 ? pick[(size_t)rand() % sizeof(pick)]
			                   : (unsigned char)rand();
		}
		check_one((const char *)in, n);
	}
}

int main(void)
{
	t_init();
	RUN(test_utf8);
	RUN(test_text);
	RUN(test_json);
	RUN(test_sizes);
	RUN(test_properties);
	return t_finish("escape");
}
