/*
 * escape.c - see escape.h.
 */
#include "escape.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
	unsigned char c = p[0];
	size_t len;
	uint32_t v, min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, v = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, v = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0; /* a continuation byte, C0/C1 (always overlong), F5..FF */
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (p[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return len;
}

bool utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	uint32_t cp;

	for (size_t i = 0; i < n;) {
		size_t l = utf8_decode(p + i, n - i, &cp);
		if (!l)
			return false;
		i += l;
	}
	return true;
}

/* An snprintf-like output: pieces are written whole or not at all, and
 * once one did not fit nothing more is written (so a cut result is a
 * prefix of the whole one); @len counts what the whole result needs. */
struct sink {
	char *out;
	size_t size;
	size_t w;   /* bytes written */
	size_t len; /* bytes the whole result needs */
	bool full;
};

static void put(struct sink *k, const void *piece, size_t n)
{
	if (!k->full && k->w + n < k->size) {
		memcpy(k->out + k->w, piece, n);
		k->w += n;
	} else {
		k->full = true;
	}
	k->len += n;
}

static size_t finish(struct sink *k)
{
	if (k->size)
		k->out[k->w] = '\0';
	return k->len;
}

/* \xNN, or \u00NN for JSON. */
static void put_hex(struct sink *k, bool json, unsigned v)
{
	char tmp[8];
	int n = json ? snprintf(tmp, sizeof(tmp), "\\u%04x", v)
	             : snprintf(tmp, sizeof(tmp), "\\x%02x", v);
	put(k, tmp, (size_t)n);
}

size_t esc_text(char *out, size_t size, const char *s, size_t n)
{
	struct sink k = {.out = out, .size = size};
	const unsigned char *p = (const unsigned char *)s;
	uint32_t cp;

	for (size_t i = 0; i < n;) {
		size_t l = utf8_decode(p + i, n - i, &cp);
		if (l == 0 || cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
			/* Every byte of it, so the bytes can be read back. */
			size_t m = l ? l : 1;
			for (size_t j = 0; j < m; j++)
				put_hex(&k, false, p[i + j]);
			i += m;
			continue;
		}
		put(&k, p + i, l);
		i += l;
	}
	return finish(&k);
}

size_t esc_json(char *out, size_t size, const char *s, size_t n)
{
	struct sink k = {.out = out, .size = size};
	const unsigned char *p = (const unsigned char *)s;
	uint32_t cp;

	put(&k, "\"", 1);
	for (size_t i = 0; i < n;) {
		size_t l = utf8_decode(p + i, n - i, &cp);
		if (l == 0) {
			put(&k, "\\ufffd", 6);
			i++;
			continue;
		}
		if (cp == '"' || cp == '\\') {
			char e[2] = {'\\', (char)cp};
			put(&k, e, 2);
		} else if (cp == '\n') {
			put(&k, "\\n", 2);
		} else if (cp == '\t') {
			put(&k, "\\t", 2);
		} else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
			/* DEL and C1 are valid JSON as they are; escaped so that
			 * the output is safe on a terminal too. */
			put_hex(&k, true, cp);
		} else {
			put(&k, p + i, l);
		}
		i += l;
	}
	put(&k, "\"", 1);
	return finish(&k);
}

static char *dup_with(size_t (*fn)(char *, size_t, const char *, size_t), const char *s)
{
	size_t n = strlen(s);
	size_t need = fn(NULL, 0, s, n);
	char *out = malloc(need + 1);
	if (out)
		fn(out, need + 1, s, n);
	return out;
}

char *esc_text_dup(const char *s)
{
	return dup_with(esc_text, s);
}

char *esc_json_dup(const char *s)
{
	return dup_with(esc_json, s);
}
