/*
 * test_url.c - unit tests for the URL helpers of source_url.c that decide
 * where credentials may go (source_url_same_origin) and what status and
 * the log show (source_url_redact).
 */
#include "fake_source.h"
#include "streamfs/source.h"

#include <stdlib.h>
#include <string.h>

static void test_same_origin(void)
{
	CHECK(source_url_same_origin("https://h:8443/a", "https://h:8443/b?x=1"));
	CHECK(source_url_same_origin("https://H/a", "https://h:443/b"));
	CHECK(source_url_same_origin("HTTP://h/a", "http://h:80/"));
	CHECK(source_url_same_origin("http://u:p@h/a", "http://h/b"));
	/* the scheme counts: https -> http on the same host:port is cleartext */
	CHECK(!source_url_same_origin("https://h:8443/a", "http://h:8443/a"));
	CHECK(!source_url_same_origin("http://h:21/a", "ftp://h:21/a"));
	CHECK(!source_url_same_origin("ftps://h/a", "ftp://h/a"));
	CHECK(!source_url_same_origin("https://h/a", "https://h:8443/a"));
	CHECK(!source_url_same_origin("https://h/a", "https://g/a"));
	CHECK(!source_url_same_origin("https://h/a", "not a url"));
}

static void test_redact(void)
{
	char *r = source_url_redact("https://alice:s3cret@h:8443/p?q=1");
	CHECK(r && !strstr(r, "s3cret") && !strstr(r, "alice"));
	CHECK(r && strstr(r, "h:8443/p?q=1"));
	free(r);
}

int main(void)
{
	t_init();
	if (source_url_global_init() < 0)
		return 1;
	RUN(test_same_origin);
	RUN(test_redact);
	source_url_global_cleanup();
	return t_finish("url");
}
