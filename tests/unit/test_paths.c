/*
 * test_paths.c - source_path_inside(): which pipe: paths lead into the
 * mount, by name ("." and "..", repeated slashes) and through symlinks.
 */
#include "fake_source.h"
#include "streamfs/source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_by_name(void)
{
	const char *m = "/srv/mnt";
	CHECK(source_path_inside("/srv/mnt", m, false));
	CHECK(source_path_inside("/srv/mnt/", m, false));
	CHECK(source_path_inside("/srv/mnt/a", m, false));
	CHECK(source_path_inside("/srv/mnt/d/e/f", m, false));
	CHECK(source_path_inside("//srv///mnt//a", m, false));
	CHECK(source_path_inside("/srv/./mnt/./a", m, false));
	CHECK(source_path_inside("/srv/x/../mnt/a", m, false));
	CHECK(source_path_inside("/srv/mnt/d/../a", m, false));
	CHECK(source_path_inside("/../../srv/mnt/a", m, false));
	CHECK(!source_path_inside("/srv/mnt2/a", m, false));
	CHECK(!source_path_inside("/srv/mn", m, false));
	CHECK(!source_path_inside("/srv", m, false));
	CHECK(!source_path_inside("/srv/mnt/../a", m, false));
	CHECK(!source_path_inside("/srv/mnt/..", m, false));
	CHECK(!source_path_inside("/tmp/fifo", m, false));
	/* Everything is below "/". */
	CHECK(source_path_inside("/tmp/fifo", "/", false));
	/* A mount point given with a trailing slash. */
	CHECK(source_path_inside("/srv/mnt/a", "/srv/mnt/", false));
}

static void test_through_symlinks(void)
{
	char *dir = t_tmpdir("paths");
	char *real = realpath(dir, NULL);
	CHECK(real != NULL);
	if (!real)
		return;
	char mnt[2048], link[2048], p[4200];
	snprintf(mnt, sizeof(mnt), "%s/mnt", real);
	snprintf(link, sizeof(link), "%s/link", real);
	CHECK_EQ(mkdir(mnt, 0755), 0);
	CHECK_EQ(symlink(mnt, link), 0);

	/* By name the link is elsewhere; followed, it is the mount point. */
	snprintf(p, sizeof(p), "%s/b", link);
	CHECK(!source_path_inside(p, mnt, false));
	CHECK(source_path_inside(p, mnt, true));
	/* Only the existing part is followed; the rest goes by name. */
	snprintf(p, sizeof(p), "%s/no/such/x", link);
	CHECK(source_path_inside(p, mnt, true));
	snprintf(p, sizeof(p), "%s/../link/b", mnt);
	CHECK(source_path_inside(p, mnt, true));
	snprintf(p, sizeof(p), "%s/fifo", real);
	CHECK(!source_path_inside(p, mnt, true));
	/* The link itself leads to the mount point. */
	CHECK(source_path_inside(link, mnt, true));

	CHECK_EQ(unlink(link), 0);
	CHECK_EQ(rmdir(mnt), 0);
	CHECK_EQ(rmdir(dir), 0);
	free(real);
	free(dir);
}

int main(void)
{
	t_init();
	RUN(test_by_name);
	RUN(test_through_symlinks);
	return t_finish("paths");
}
