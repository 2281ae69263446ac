/*
 * source_url.c - http(s)/ftp(s) URLs through libcurl. (Placeholder until
 * the URL source lands: such a stream fails at once with ENOSYS.)
 */
#include "source.h"

#include "streamfs/store.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>

static int url_start(struct stream *s, void *src)
{
	return -ENOSYS;
}

static const struct stream_source_ops url_ops = {
	.kind = "url",
	.start = url_start,
};

struct stream *source_url_new(struct ioloop *loop, const char *name, const char *url,
			      const struct file_opts *opts, struct store *store)
{
	return stream_new(name, store, &url_ops, NULL);
}

int source_url_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void source_url_global_cleanup(void)
{
	curl_global_cleanup();
}
