/*
 * mount_opts.c - the -o option: one comma-separated list that carries
 * three kinds of options, as sshfs and rclone take them, so that an
 * /etc/fstab line and a systemd .mount unit can say everything:
 *
 *   - streamfs's mount-wide options, spelled as the long options with '_'
 *     or '-' (cache_dir=DIR, cache_size=BYTES, cache_min_free=BYTES|N%,
 *     size_unknown=auto|wait, foreground, verbose, quiet): parsed exactly
 *     as --cache-dir etc. (config.c), so the same values and messages;
 *   - FUSE and kernel options libfuse takes (allow_other, nosuid, ...):
 *     kept, in order, for fs_mount();
 *   - what mount(8), mount.fuse3 and systemd add or leave for their own
 *     use (rw from "defaults", nofail, _netdev, user, x-systemd.*, ...):
 *     dropped, so that they neither fail the mount nor make it writable
 *     (the FUSE layer puts "ro" last whatever -o says).
 *
 * Anything else is refused, one line, exit 2: a typo in an fstab line
 * should say so at mount time, not be ignored. Per-file options (size=,
 * header=, ...) are refused too, with the reason: in the fstab form every
 * file comes from the manifest, whose sections say them per file.
 *
 * Values cannot hold a comma (libfuse's own -o splitting has the same
 * limit for the options it parses).
 */
#include "config_impl.h"

#include <stdlib.h>
#include <string.h>

/* Taken by libfuse (fuse_session_new() and its mount code, libfuse 3.14). */
static const char *const fuse_flags[] = {
    "allow_other",  "allow_root", "default_permissions",
    "auto_unmount", "debug",      "ro",
    "dev",          "nodev",      "suid",
    "nosuid",       "exec",       "noexec",
    "atime",        "noatime",    "sync",
    "async",        "dirsync",
};
static const char *const fuse_valued[] = {"fsname", "subtype"};

/* mount(8), mount.fuse3 and systemd's: meaningful to them, not to the
 * file system ("rw" comes from fstab's "defaults"; the mount stays
 * read-only). Atime variants libfuse does not know are dropped too: a
 * read-only file system updates no atime. */
static const char *const dropped_flags[] = {
    "rw",         "defaults",    "auto",          "noauto",     "nofail",   "user",
    "users",      "nouser",      "owner",         "group",      "_netdev",  "relatime",
    "norelatime", "strictatime", "nostrictatime", "nodiratime", "lazytime", "nolazytime",
};
/* Prefixes of valued options that are theirs: user=NAME (libmount passes
 * it for a user mount), comment=, x-systemd.*, x-gvfs-*, ... */
static const char *const dropped_prefixes[] = {"user=", "comment=", "x-"};

static bool in_list(const char *const *list, size_t n, const char *s, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(list[i]) == len && !strncmp(list[i], s, len))
			return true;
	return false;
}

#define IN(list, s, len) in_list(list, sizeof(list) / sizeof(list[0]), s, len)

/* One option of the list: @opt is NUL-terminated, "key" or "key=value". */
static int one(struct config *cfg, char *opt, char *err, size_t errlen)
{
	char q[ESC_LEN];
	size_t klen = strcspn(opt, "=");
	bool valued = opt[klen] == '=';

	if (!*opt)
		return 0; /* "a,,b" or a trailing comma: nothing */
	for (size_t i = 0; i < sizeof(dropped_prefixes) / sizeof(dropped_prefixes[0]); i++)
		if (!strncmp(opt, dropped_prefixes[i], strlen(dropped_prefixes[i])))
			return 0;
	if (!valued && IN(dropped_flags, opt, klen))
		return 0;
	if ((!valued && IN(fuse_flags, opt, klen)) || (valued && IN(fuse_valued, opt, klen)))
		return strings_add(&cfg->fuse_opts, opt) ? cfg_fail(err, errlen, "out of memory")
		                                         : 0;
	if (IN(fuse_flags, opt, klen))
		return cfg_fail(err, errlen, "mount option '%.*s' takes no value", (int)klen, opt);
	if (IN(fuse_valued, opt, klen))
		return cfg_fail(err, errlen, "mount option '%.*s' needs a value", (int)klen, opt);

	int r = cfg_set_mount_option(cfg, opt, err, errlen);
	if (r != -2)
		return r;
	char *key = strndup(opt, klen);
	if (!key)
		return cfg_fail(err, errlen, "out of memory");
	bool per_file = fopt_find(key) >= 0;
	cfg_esc(q, sizeof(q), key);
	free(key);
	if (per_file)
		return cfg_fail(err, errlen,
		                "mount option '%s' is a per-file option: set it in the manifest's "
		                "sections",
		                q);
	return cfg_fail(err, errlen, "unknown mount option '%s' in -o", q);
}

int config_mount_opts(struct config *cfg, const char *list, char *err, size_t errlen)
{
	char *copy = strdup(list);
	char *p = copy, *opt;
	int r = 0;

	if (!copy)
		return cfg_fail(err, errlen, "out of memory");
	while (r == 0 && (opt = strsep(&p, ",")))
		r = one(cfg, opt, err, errlen);
	free(copy);
	return r;
}
