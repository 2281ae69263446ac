/*
 * escape.h - text from servers, commands and file names made safe to print.
 *
 * Names are bytes, and an ETag, a redirect target, an error text or a
 * command's standard error can carry anything, terminal escapes included
 * (ESC [ 2 J clears the screen; OSC sequences set window titles or
 * clipboards). Whatever reaches a terminal or a log goes through here:
 *
 *  - esc_text(): for people. Control bytes (below 0x20, 0x7f), the C1
 *    controls U+0080..U+009F (some terminals act on them) and bytes that
 *    are not valid UTF-8 are written \xNN, one escape per byte; valid UTF-8
 *    passes through. A backslash is left as it is: this is for reading,
 *    not for parsing back (JSON is for that).
 *  - esc_json(): a JSON string literal (RFC 8259), quotes included, strict
 *    UTF-8 whatever the input: '"' and '\' escaped, controls and C1 as
 *    \u00XX, each byte that is not valid UTF-8 replaced with \ufffd.
 *
 * Both work like snprintf: they write at most @size bytes, NUL included,
 * never cut an escape or a character in half, and return the length the
 * whole result needs (without the NUL). Thread-safe, no allocation.
 */
#ifndef STREAMFS_ESCAPE_H
#define STREAMFS_ESCAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The strict UTF-8 sequence at @p (@n bytes available): its length (1-4)
 * with the code point in *@cp, or 0 if the bytes there are not one
 * (overlong forms, surrogates, code points past U+10FFFF, a truncated or
 * broken sequence).
 */
size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp);

/* Are the @n bytes at @s valid UTF-8? */
bool utf8_valid(const char *s, size_t n);

size_t esc_text(char *out, size_t size, const char *s, size_t n);
size_t esc_json(char *out, size_t size, const char *s, size_t n);

/* The same into a malloc'ed string (for NUL-terminated @s); NULL when out
 * of memory. */
char *esc_text_dup(const char *s);
char *esc_json_dup(const char *s);

#endif
