/*
 * test_s3.c - unit tests for s3.c (s3://BUCKET/KEY, key encoding, the AWS
 * credentials and config files, the lookups' order, S3 error bodies) and
 * for the redaction of libcurl's verbose output (url_debug.c).
 *
 * The lookups read a table instead of the environment, and files this
 * test writes in its own temporary directory.
 */
#include "harness.h"
#include "streamfs/s3.h"
#include "url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the environment the lookups see ---------------------------------- */

static const char *fake_env[32][2];

static const char *env_of(const char *name)
{
	for (size_t i = 0; fake_env[i][0]; i++)
		if (strcmp(fake_env[i][0], name) == 0)
			return fake_env[i][1];
	return NULL;
}

/* Set the table: name, value pairs, ended by NULL. */
static void env_set(const char *const *pairs)
{
	size_t i = 0;
	memset(fake_env, 0, sizeof(fake_env));
	for (; pairs[2 * i]; i++) {
		fake_env[i][0] = pairs[2 * i];
		fake_env[i][1] = pairs[2 * i + 1];
	}
}

static char tmpdir[] = "/tmp/streamfs-test-s3-XXXXXX";
static char cred_path[128], config_path[128];

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

/* ---- s3://BUCKET/KEY ----------------------------------------------------- */

static void test_parse_uri(void)
{
	char err[160], *b, *k;
	CHECK_EQ(s3_parse_uri("s3://bkt/dir/a b.txt", &b, &k, err, sizeof(err)), 0);
	CHECK_STR(b, "bkt");
	CHECK_STR(k, "dir/a b.txt");
	free(b);
	free(k);
	CHECK_EQ(s3_parse_uri("s3://bkt", &b, &k, err, sizeof(err)), -1);
	CHECK(strstr(err, "no key") != NULL);
	CHECK(b == NULL && k == NULL);
	CHECK_EQ(s3_parse_uri("s3://bkt/", NULL, NULL, err, sizeof(err)), -1);
	CHECK(strstr(err, "no key") != NULL);
	CHECK_EQ(s3_parse_uri("s3:///key", NULL, NULL, err, sizeof(err)), -1);
	CHECK(strstr(err, "no bucket") != NULL);
	CHECK_EQ(s3_parse_uri("s3://", NULL, NULL, err, sizeof(err)), -1);
	CHECK(strstr(err, "no bucket") != NULL);
	CHECK_EQ(s3_parse_uri("s3:bkt/key", NULL, NULL, err, sizeof(err)), -1);
	CHECK_EQ(s3_parse_uri("s3://b:k@h/key", NULL, NULL, err, sizeof(err)), -1);
	CHECK(strstr(err, "bucket") != NULL);
	CHECK_EQ(s3_parse_uri("s3://bkt/a\nb", NULL, NULL, err, sizeof(err)), -1);
}

static void test_region_endpoint(void)
{
	char err[160];
	CHECK(s3_region_ok("us-east-1"));
	CHECK(s3_region_ok("cn-north-1"));
	CHECK(!s3_region_ok(""));
	CHECK(!s3_region_ok("US-EAST-1"));
	CHECK(!s3_region_ok("us east"));
	CHECK(!s3_region_ok("-us"));
	CHECK(!s3_region_ok("eu:west"));
	CHECK(!s3_region_ok("a/b"));
	CHECK_EQ(s3_check_endpoint("http://127.0.0.1:4568", err, sizeof(err)), 0);
	CHECK_EQ(s3_check_endpoint("https://minio.example/s3/", err, sizeof(err)), 0);
	CHECK_EQ(s3_check_endpoint("ftp://h", err, sizeof(err)), -1);
	CHECK_EQ(s3_check_endpoint("http://", err, sizeof(err)), -1);
	CHECK(strstr(err, "no host") != NULL);
	CHECK_EQ(s3_check_endpoint("http://:80", err, sizeof(err)), -1);
	CHECK_EQ(s3_check_endpoint("http://u:p@h", err, sizeof(err)), -1);
	CHECK_EQ(s3_check_endpoint("http://h/?x=1", err, sizeof(err)), -1);
	CHECK_EQ(s3_check_endpoint("http://h:99999", err, sizeof(err)), -1);
	CHECK_EQ(s3_check_endpoint("localhost:4568", err, sizeof(err)), -1);
}

static void test_encode_key(void)
{
	char *e = s3_encode_key("dir/a b+c=d~e_f.g-h/%ü");
	CHECK_STR(e, "dir/a%20b%2Bc%3Dd~e_f.g-h/%25%C3%BC");
	free(e);
	e = s3_encode_key("a/../b?#&");
	CHECK_STR(e, "a/../b%3F%23%26");
	free(e);
}

/* ---- the files ---------------------------------------------------------- */

static void test_ini(void)
{
	static const char text[] = "# comment\n"
	                           "[default]\n"
	                           "aws_access_key_id = AKIDDEFAULT\n"
	                           "aws_secret_access_key=secret/with=equals\n"
	                           "\n"
	                           "[ profile dev ]\n"
	                           "region = eu-west-3\n"
	                           "s3 =\n"
	                           "  addressing_style = path\n"
	                           "  region = nested-ignored\n"
	                           "; another comment\n"
	                           "endpoint_url = http://127.0.0.1:9000  \n"
	                           "[other]\n"
	                           "region = ap-south-1\n"
	                           "[profile dev]\n"
	                           "region = eu-west-2";
	char *v;
	CHECK_EQ(s3_ini_get(text, "default", "aws_access_key_id", &v), 1);
	CHECK_STR(v, "AKIDDEFAULT");
	free(v);
	CHECK_EQ(s3_ini_get(text, "default", "aws_secret_access_key", &v), 1);
	CHECK_STR(v, "secret/with=equals");
	free(v);
	CHECK_EQ(s3_ini_get(text, "profile dev", "endpoint_url", &v), 1);
	CHECK_STR(v, "http://127.0.0.1:9000");
	free(v);
	/* nested settings are not the profile's; a repeated section adds,
	 * and the last value wins */
	CHECK_EQ(s3_ini_get(text, "profile dev", "region", &v), 1);
	CHECK_STR(v, "eu-west-2");
	free(v);
	CHECK_EQ(s3_ini_get(text, "profile dev", "addressing_style", &v), 0);
	CHECK(v == NULL);
	CHECK_EQ(s3_ini_get(text, "dev", "region", &v), 0);
	CHECK_EQ(s3_ini_get(text, "default", "region", &v), 0);
	CHECK_EQ(s3_ini_get("", "default", "region", &v), 0);
	CHECK_EQ(s3_ini_get("[default\nregion = x\n", "default", "region", &v), 0);
}

/* ---- the lookups -------------------------------------------------------- */

static void test_resolve_env(void)
{
	char err[200];
	struct s3_target t;
	struct s3_opts o = {0};
	env_set((const char *const[]){"HOME", tmpdir, "AWS_ACCESS_KEY_ID", "AKIDENV",
	                              "AWS_SECRET_ACCESS_KEY", "envsecret", "AWS_SESSION_TOKEN",
	                              "tok/en", "AWS_REGION", "eu-central-1", NULL});
	CHECK_EQ(s3_resolve("s3://my-bucket/dir/a b", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "https://my-bucket.s3.eu-central-1.amazonaws.com/dir/a%20b");
	CHECK_STR(t.sigv4, "aws:amz:eu-central-1:s3");
	CHECK_STR(t.userpwd, "AKIDENV:envsecret");
	CHECK_STR(t.token_header, "x-amz-security-token: tok/en");
	CHECK(t.no_creds == NULL);
	s3_target_free(&t);

	/* the option beats the environment; path style when forced, for a
	 * bucket that is no DNS label, and for an https bucket with a dot */
	o.region = "us-west-2";
	o.force_path_style = true;
	CHECK_EQ(s3_resolve("s3://my-bucket/k", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "https://s3.us-west-2.amazonaws.com/my-bucket/k");
	s3_target_free(&t);
	o.force_path_style = false;
	CHECK_EQ(s3_resolve("s3://My_Bucket/k", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "https://s3.us-west-2.amazonaws.com/My_Bucket/k");
	s3_target_free(&t);
	CHECK_EQ(s3_resolve("s3://a.b.c/k", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "https://s3.us-west-2.amazonaws.com/a.b.c/k");
	s3_target_free(&t);

	/* an endpoint on an IP address: path style, its port and path kept */
	o.endpoint_url = "http://127.0.0.1:4568/base/";
	CHECK_EQ(s3_resolve("s3://bkt/x/y", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "http://127.0.0.1:4568/base/bkt/x/y");
	s3_target_free(&t);
	o.endpoint_url = "http://s3.local:9000";
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "http://bkt.s3.local:9000/x");
	s3_target_free(&t);

	/* --no-sign-request: nothing signed, no credentials kept */
	o.no_sign_request = true;
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK(t.sigv4 == NULL && t.userpwd == NULL && t.token_header == NULL);
	CHECK(t.no_creds == NULL);
	s3_target_free(&t);
}

static void test_resolve_bad_env(void)
{
	char err[200];
	struct s3_target t;
	struct s3_opts o = {0};
	env_set((const char *const[]){"HOME", tmpdir, "AWS_REGION", "Not A Region", NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), -1);
	CHECK(strstr(err, "AWS_REGION") && strstr(err, "Not A Region"));
	CHECK(t.url == NULL);
	env_set((const char *const[]){"HOME", tmpdir, "AWS_ENDPOINT_URL", "localhost:9000", NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), -1);
	CHECK(strstr(err, "endpoint") != NULL);
	/* AWS_ENDPOINT_URL_S3 comes first */
	env_set((const char *const[]){"HOME", tmpdir, "AWS_ENDPOINT_URL", "localhost:9000",
	                              "AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1", NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.url, "http://127.0.0.1:1/bkt/x");
	s3_target_free(&t);
}

static void test_resolve_files(void)
{
	char err[200];
	struct s3_target t;
	struct s3_opts o = {0};
	write_file(cred_path, "[default]\n"
	                      "aws_access_key_id = AKIDFILE\n"
	                      "aws_secret_access_key = filesecret\n"
	                      "[dev]\n"
	                      "aws_access_key_id = AKIDDEV\n"
	                      "aws_secret_access_key = devsecret\n"
	                      "aws_session_token = devtoken\n");
	write_file(config_path, "[default]\n"
	                        "region = ap-northeast-1\n"
	                        "[profile dev]\n"
	                        "region = sa-east-1\n"
	                        "endpoint_url = http://127.0.0.1:9000\n"
	                        "[profile cfgonly]\n"
	                        "aws_access_key_id = AKIDCFG\n"
	                        "aws_secret_access_key = cfgsecret\n");

	/* ~/.aws/credentials and ~/.aws/config under HOME */
	env_set((const char *const[]){"HOME", tmpdir, NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.userpwd, "AKIDFILE:filesecret");
	CHECK_STR(t.region, "ap-northeast-1");
	CHECK(t.token_header == NULL);
	s3_target_free(&t);

	/* AWS_PROFILE: its keys, token, region and endpoint */
	env_set((const char *const[]){"HOME", tmpdir, "AWS_PROFILE", "dev", NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.userpwd, "AKIDDEV:devsecret");
	CHECK_STR(t.token_header, "x-amz-security-token: devtoken");
	CHECK_STR(t.sigv4, "aws:amz:sa-east-1:s3");
	CHECK_STR(t.url, "http://127.0.0.1:9000/bkt/x");
	s3_target_free(&t);

	/* the environment's keys beat AWS_PROFILE, but not --profile */
	env_set((const char *const[]){"HOME", tmpdir, "AWS_PROFILE", "dev", "AWS_ACCESS_KEY_ID",
	                              "AKIDENV", "AWS_SECRET_ACCESS_KEY", "envsecret", NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.userpwd, "AKIDENV:envsecret");
	s3_target_free(&t);
	o.profile = "cfgonly"; /* keys in the config file only */
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.userpwd, "AKIDCFG:cfgsecret");
	CHECK_STR(t.region, "us-east-1"); /* none for that profile: the default */
	s3_target_free(&t);

	/* files named by the environment; a missing profile: no credentials */
	char other[80];
	snprintf(other, sizeof(other), "%s/other-credentials", tmpdir);
	write_file(other, "[default]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=o\n");
	o.profile = NULL;
	env_set((const char *const[]){"HOME", "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE", other,
	                              "AWS_CONFIG_FILE", config_path, NULL});
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK_STR(t.userpwd, "AKIDOTHER:o");
	CHECK_STR(t.region, "ap-northeast-1");
	s3_target_free(&t);
	o.profile = "nosuch";
	CHECK_EQ(s3_resolve("s3://bkt/x", &o, env_of, &t, err, sizeof(err)), 0);
	CHECK(t.userpwd == NULL && t.sigv4 == NULL);
	CHECK(t.no_creds && strstr(t.no_creds, "no AWS credentials") &&
	      strstr(t.no_creds, "'nosuch'"));
	s3_target_free(&t);
}

/* ---- error bodies ------------------------------------------------------- */

static void test_error_code(void)
{
	static const char body[] =
	    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>"
	    "<Message>The request signature we calculated does not match</Message></Error>";
	char code[64];
	CHECK(s3_error_code(body, strlen(body), code, sizeof(code)));
	CHECK_STR(code, "SignatureDoesNotMatch");
	CHECK(!s3_error_code(body, 50, code, sizeof(code))); /* cut before the code */
	CHECK(!s3_error_code(body, 60, code, sizeof(code))); /* cut inside it */
	CHECK(!s3_error_code(body, strlen(body), code, 10)); /* no room */
	static const char html[] = "<html><Code>Nope</Code></html>";
	CHECK(!s3_error_code(html, strlen(html), code, sizeof(code)));
	static const char odd[] = "<Error><Code>a\x1b[2Jb</Code></Error>";
	CHECK(!s3_error_code(odd, strlen(odd), code, sizeof(code)));
	static const char empty[] = "<Error><Code></Code></Error>";
	CHECK(!s3_error_code(empty, strlen(empty), code, sizeof(code)));
}

/* ---- libcurl's verbose output -------------------------------------------- */

static const char *redact(const char *line)
{
	static char out[512];
	return url_debug_redact(line, strlen(line), out, sizeof(out));
}

static void test_redact(void)
{
	CHECK_STR(redact("Authorization: AWS4-HMAC-SHA256 Credential=AKID/x, Signature=abc"),
	          "Authorization: [redacted]");
	CHECK_STR(redact("authorization: Basic dXNlcjpwdw=="), "authorization: [redacted]");
	CHECK_STR(redact("Proxy-Authorization: Basic eA=="), "Proxy-Authorization: [redacted]");
	CHECK_STR(redact("Cookie: session=1"), "Cookie: [redacted]");
	CHECK_STR(redact("set-cookie: id=2; Path=/"), "set-cookie: [redacted]");
	CHECK_STR(redact("x-amz-security-token: FwoGZXIvYXdz"), "x-amz-security-token: [redacted]");
	CHECK_STR(redact("X-Amz-Date: 20261202T101642Z"), "X-Amz-Date: 20261202T101642Z");
	CHECK_STR(redact("Range: bytes=0-9"), "Range: bytes=0-9");
	CHECK_STR(redact("Issue another request to this URL: 'http://bob:pw@h:8/x?a=1'"),
	          "Issue another request to this URL: 'http://[redacted]@h:8/x?a=1'");
	CHECK_STR(redact("Location: https://u@h/p"), "Location: https://[redacted]@h/p");
	CHECK_STR(redact("GET /k?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=f00d&x=1 HTTP/1.1"),
	          "GET /k?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&x=1 HTTP/1.1");
	CHECK_STR(redact("GET /k?x-amz-security-token=T HTTP/1.1"),
	          "GET /k?x-amz-security-token=[redacted] HTTP/1.1");
	CHECK_STR(redact("Connected to 127.0.0.1 (127.0.0.1) port 80 (#0)"),
	          "Connected to 127.0.0.1 (127.0.0.1) port 80 (#0)");
	/* a line longer than the buffer is cut, still terminated */
	char big[600], out[32];
	memset(big, 'a', sizeof(big));
	url_debug_redact(big, sizeof(big), out, sizeof(out));
	CHECK_EQ(strlen(out), sizeof(out) - 1);
}

int main(void)
{
	t_init();
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	char aws[64];
	snprintf(aws, sizeof(aws), "%s/.aws", tmpdir);
	snprintf(cred_path, sizeof(cred_path), "%s/credentials", aws);
	snprintf(config_path, sizeof(config_path), "%s/config", aws);
	mkdir(aws, 0700);
	RUN(test_parse_uri);
	RUN(test_region_endpoint);
	RUN(test_encode_key);
	RUN(test_ini);
	RUN(test_resolve_env);
	RUN(test_resolve_bad_env);
	RUN(test_resolve_files);
	RUN(test_error_code);
	RUN(test_redact);
	char other[80];
	snprintf(other, sizeof(other), "%s/other-credentials", tmpdir);
	unlink(cred_path);
	unlink(config_path);
	unlink(other);
	rmdir(aws);
	rmdir(tmpdir);
	return t_finish("test_s3");
}
