/*
 * test_url.c - unit tests for the URL helpers of the URL source (url.c)
 * that decide where credentials may go (source_url_same_origin), what
 * status and the log show (source_url_redact), and the copy a source
 * keeps of its options (source_url_opts_copy/free).
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

static void test_opts_copy(void)
{
	char h0[] = "X-A: 1", h1[] = "Authorization: Bearer t";
	char *headers[] = {h0, h1};
	char userpwd[] = "alice:s3cret", netrc[] = "/etc/netrc";
	struct url_opts o = {.headers = headers,
	                     .nheaders = 2,
	                     .userpwd = userpwd,
	                     .netrc_file = netrc,
	                     .insecure = true,
	                     .ondemand = true,
	                     .retries = 7,
	                     .retry_time = 1.5,
	                     .max_redirs = 3};
	struct url_opts c;
	CHECK(source_url_opts_copy(&c, &o) == 0);
	CHECK_EQ(c.nheaders, 2);
	CHECK(c.headers != headers && c.headers[0] != h0 && c.headers[1] != h1);
	CHECK(strcmp(c.headers[0], h0) == 0 && strcmp(c.headers[1], h1) == 0);
	CHECK(c.userpwd != userpwd && strcmp(c.userpwd, userpwd) == 0);
	CHECK(c.netrc_file != netrc && strcmp(c.netrc_file, netrc) == 0);
	CHECK(c.insecure && c.ondemand && !c.netrc && !c.location_trusted);
	CHECK_EQ(c.retries, 7);
	CHECK_EQ(c.max_redirs, 3);
	CHECK(c.retry_time == 1.5);
	source_url_opts_free(&c);
	CHECK(c.headers == NULL && c.nheaders == 0 && c.userpwd == NULL);

	struct url_opts none = {.retries = 1}, d;
	CHECK(source_url_opts_copy(&d, &none) == 0);
	CHECK(d.headers == NULL && d.userpwd == NULL && d.netrc_file == NULL);
	CHECK_EQ(d.retries, 1);
	source_url_opts_free(&d);
	source_url_opts_free(NULL);
}

int main(void)
{
	t_init();
	if (source_url_global_init() < 0)
		return 1;
	RUN(test_same_origin);
	RUN(test_redact);
	RUN(test_opts_copy);
	source_url_global_cleanup();
	return t_finish("url");
}
