/*
 * s3.h - s3://BUCKET/KEY sources: an S3 object read as a URL stream whose
 * requests are signed with AWS Signature Version 4.
 *
 * An S3 source is a URL source (source_url_new()) and does everything a
 * URL stream does (Range, random access, If-Range with the ETag, evicted
 * bytes fetched again, errors at the exact byte). What this module adds
 * is where the object is and how to sign for it, found the way the AWS
 * CLI finds them:
 *
 *  - credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with
 *    AWS_SESSION_TOKEN) unless a profile was named with the profile
 *    option; then the profile (the option, AWS_PROFILE, or "default") in
 *    the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, or
 *    ~/.aws/credentials; section [NAME]) and in the config file
 *    (AWS_CONFIG_FILE, or ~/.aws/config; section [profile NAME], or
 *    [default]);
 *  - the region: the option, AWS_REGION, AWS_DEFAULT_REGION, the
 *    profile's "region" in the config file, else us-east-1;
 *  - the endpoint: the option, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the
 *    profile's "endpoint_url", else https://s3.REGION.amazonaws.com;
 *  - the address: virtual-hosted (https://BUCKET.s3.REGION...) unless
 *    path style is forced, the bucket is not a DNS label, an https
 *    bucket holds a '.' (the wildcard certificate would not match), or
 *    the endpoint's host is an IP address or "localhost".
 *
 * Requests carry "x-amz-content-sha256: UNSIGNED-PAYLOAD" (curl 7.88
 * signs with that header's value but does not add it) and, with a
 * session token, "x-amz-security-token"; the key's path segments are
 * percent-encoded here (curl 7.88 signs the path as it is given), and
 * the path goes out as it is (CURLOPT_PATH_AS_IS: "a/../b" is a key).
 *
 * Secrets (the secret key, the session token) live only in the source's
 * copy of its options: never in the URL, the status or the log.
 */
#ifndef STREAMFS_S3_H
#define STREAMFS_S3_H

#include "streamfs/ioloop.h"
#include "streamfs/source.h"
#include "streamfs/store.h"

#include <stdbool.h>
#include <stddef.h>

/* What the user said about an S3 file; NULL strings: look them up. */
struct s3_opts {
	const char *region;       /* --region */
	const char *endpoint_url; /* --endpoint-url */
	const char *profile;      /* --profile: this profile, not the environment's keys */
	bool force_path_style;    /* https://ENDPOINT/BUCKET/KEY always */
	bool no_sign_request;     /* public objects: no credentials, no signature */
};

/* The environment as the lookups see it: getenv(), or a table in tests. */
typedef const char *s3_getenv_fn(const char *name);

/* An S3 object, resolved into what its requests need. All owned. */
struct s3_target {
	char *url;          /* the object's http(s) URL, key encoded */
	char *region;       /* the region requests are signed for */
	char *sigv4;        /* "aws:amz:REGION:s3", or NULL: unsigned */
	char *userpwd;      /* "KEY_ID:SECRET" for CURLOPT_USERPWD, or NULL */
	char *token_header; /* "x-amz-security-token: TOKEN", or NULL */
	char *no_creds;     /* no credentials were found: why, for status; the
	                     * file fails with it when it starts */
};

/*
 * Check "s3://BUCKET/KEY": a bucket of letters, digits, '.', '-' and '_'
 * (at most 255 bytes) and a non-empty key. *@bucket and *@key (if not
 * NULL) get malloc'ed copies. Returns 0, or -1 with a one-line @err.
 */
int s3_parse_uri(const char *uri, char **bucket, char **key, char *err, size_t errlen);

/* Is @region a region name ("eu-west-3": lower-case letters, digits and
 * inner '-', at most 63 bytes)? */
bool s3_region_ok(const char *region);

/* Is @url an endpoint: http:// or https://, a host, an optional port and
 * path, no credentials, query or fragment? Returns 0, or -1 with @err
 * (NULL: no message) saying what is wrong. */
int s3_check_endpoint(const char *url, char *err, size_t errlen);

/* @key with every byte but A-Z a-z 0-9 - . _ ~ and '/' written %XX (the
 * canonical URI of SigV4 for S3). malloc'ed; NULL without memory. */
char *s3_encode_key(const char *key);

/*
 * The value of @key in section [@section] of the AWS-style INI @text
 * (the credentials and config files: "#" and ";" comments, "key = value",
 * indented lines under "key =" are nested settings and skipped). Names
 * are matched exactly, after trimming blanks. Returns 1 with a malloc'ed
 * *@out, 0 if absent, -1 without memory.
 */
int s3_ini_get(const char *text, const char *section, const char *key, char **out);

/* The <Code> of an S3 error body ("<Error><Code>SignatureDoesNotMatch
 * </Code>..."), letters, digits and '.' only, in @out. False if the
 * @len bytes of @body hold none. */
bool s3_error_code(const char *body, size_t len, char *out, size_t size);

/*
 * Resolve @uri (checked with s3_parse_uri()) with @o and the environment
 * @env (NULL: getenv) into @t. No credentials is not an error here: the
 * target is unsigned and t->no_creds says why. Returns 0, or -1 with @err
 * set (a region or endpoint from the environment or a file that does not
 * parse, no memory) and @t zeroed.
 */
int s3_resolve(const char *uri, const struct s3_opts *o, s3_getenv_fn *env, struct s3_target *t,
               char *err, size_t errlen);

/* Free what @t owns (the secret wiped first) and zero it. NULL is fine. */
void s3_target_free(struct s3_target *t);

/*
 * The object at s3://BUCKET/KEY as a new IDLE URL stream (source.h's
 * rules): resolved with s3_resolve(), requested with @base's options
 * plus the signature. Returns NULL with errno set and @err filled on
 * failure; takes @store in every case.
 */
struct stream *source_s3_new(struct ioloop *loop, const char *name, const char *uri,
                             const struct s3_opts *o, const struct url_opts *base,
                             struct store *store, char *err, size_t errlen);

#endif
