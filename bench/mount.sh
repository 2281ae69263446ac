# bench/mount.sh - end a streamfs mount the benchmarks started. Sourced,
# not run.
#
# stop_streamfs: unmount MNT (lazily if busy) and end the foreground
# daemon SFS_PID, which exits once unmounted; SIGTERM if it has not after
# 5 s, SIGKILL 5 s later. Does nothing if SFS_PID is empty; clears it.

stop_streamfs() {
	[ -n "${SFS_PID:-}" ] || return 0
	if mountpoint -q "$MNT" 2>/dev/null; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
	fi
	for _ in $(seq 50); do kill -0 "$SFS_PID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$SFS_PID" 2>/dev/null; then
		kill -TERM "$SFS_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$SFS_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SFS_PID" 2>/dev/null || true
	fi
	wait "$SFS_PID" 2>/dev/null || true
	SFS_PID=
}
