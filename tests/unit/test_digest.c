/*
 * test_digest.c - unit tests for digest.c: SHA-256 against the test
 * vectors of FIPS 180-4 (and a million 'a's fed in odd pieces, so the
 * buffering across blocks is exercised), CRC-32C against its check value
 * and RFC 3720's examples.
 */
#include "digest.h"
#include "harness.h"

#include <stdio.h>
#include <string.h>

static const char *hex(const uint8_t *d)
{
	static char out[2 * SHA256_LEN + 1];
	for (int i = 0; i < SHA256_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
	return out;
}

static const char *sha(const char *s)
{
	struct sha256 c;
	uint8_t d[SHA256_LEN];
	sha256_init(&c);
	sha256_update(&c, s, strlen(s));
	sha256_final(&c, d);
	return hex(d);
}

static void test_sha256(void)
{
	CHECK(!strcmp(sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
	CHECK(!strcmp(sha("abc"),
	              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
	CHECK(!strcmp(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
	              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
	/* 55, 56 and 64 bytes: the padding's edge cases */
	CHECK(!strcmp(sha("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
	              "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"));
	CHECK(!strcmp(sha("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
	              "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"));
	struct sha256 c;
	uint8_t d[SHA256_LEN];
	char a[1000];
	memset(a, 'a', sizeof(a));
	sha256_init(&c);
	for (size_t done = 0, step = 1; done < 1000000; done += step, step = step % 997 + 1) {
		if (done + step > 1000000)
			step = 1000000 - done;
		sha256_update(&c, a, step);
	}
	sha256_final(&c, d);
	CHECK(!strcmp(hex(d), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
}

static void test_crc32c(void)
{
	uint8_t buf[32];
	CHECK(crc32c(0, "123456789", 9) == 0xe3069283u);
	memset(buf, 0, sizeof(buf));
	CHECK(crc32c(0, buf, sizeof(buf)) == 0x8a9136aau);
	memset(buf, 0xff, sizeof(buf));
	CHECK(crc32c(0, buf, sizeof(buf)) == 0x62a8ab43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	CHECK(crc32c(0, buf, sizeof(buf)) == 0x46dd794eu);
	/* in pieces: the same as at once */
	CHECK(crc32c(crc32c(0, buf, 5), buf + 5, 27) == 0x46dd794eu);
}

int main(void)
{
	t_init();
	RUN(test_sha256);
	RUN(test_crc32c);
	return t_finish("digest");
}
