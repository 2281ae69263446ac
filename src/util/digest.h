/*
 * digest.h - the two checksums the persistent cache needs: SHA-256 (the
 * name of an entry: a hash of the URL and of the request's identity,
 * which may hold credentials and is never stored in clear) and CRC-32C
 * (the integrity of an entry's map). Written from FIPS 180-4 and RFC 3720
 * (appendix B.4); table-driven, no CPU-specific code. Can't fail.
 */
#ifndef STREAMFS_DIGEST_H
#define STREAMFS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

struct sha256 {
	uint32_t h[8];
	uint64_t len; /* bytes hashed so far */
	uint8_t buf[64];
	size_t nbuf;
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t len);
/* The digest into @out; @c must be initialised again before reuse. */
void sha256_final(struct sha256 *c, uint8_t out[SHA256_LEN]);

/* CRC-32C (Castagnoli) of @len bytes, continuing from @crc (0 to start). */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
