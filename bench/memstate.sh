# bench/memstate.sh - the same state of free memory before every measured
# run that writes new pages (streamfs's store, a download to a file).
# Sourced, not run (by sh or bash).
#
# Why: this machine type's kernel hands free memory back to its host (free
# page reporting: /sys/module/page_reporting), and the first touch of each
# page handed back costs the host's work. Measured here: writing 1 GiB into
# a new file takes 2.5-3.5 s on such ("cold") memory and 0.25 s on memory
# freed just before ("warm"). Whether a run gets warm or cold pages depends
# on what ran before it: memory freed recently stays warm until the kernel
# reports it, which it did for a 1 GiB removal within ~15 s and, in another
# try, for only 55 of 512 MiB in 20 s. A run after another's unmount (which
# frees its store) or a download's removal gets warm pages, one after curl
# to /dev/null may get cold ones: left alone, the order of the runs decides
# the figures. Hence:
#
#   BENCH_MEM=warm (default)  write and remove SIZE MiB in the run's
#       directory just before it, so that every run writes into warm pages:
#       what a machine without free page reporting sees every time.
#   BENCH_MEM=asis  leave memory as it is.
#
# mem_state DIR SIZE_MIB   put memory in that state
# mem_floor DIR SIZE_MIB   print the rate of writing SIZE_MIB into a new file
#                          in DIR with memory as it is, then again at once:
#                          what keeping the bytes in the page cache costs

BENCH_MEM=${BENCH_MEM:-warm}
case $BENCH_MEM in
warm | asis) ;;
*) echo "memstate: BENCH_MEM must be warm or asis, not '$BENCH_MEM'" >&2; exit 2 ;;
esac

mem_write() { # DIR SIZE_MIB: prints the MiB/s
	local f t0 t1
	f=$(mktemp "$1/memstate.XXXXXX")
	t0=$(date +%s.%N)
	dd if=/dev/zero of="$f" bs=1M count="$2" status=none
	t1=$(date +%s.%N)
	rm -f "$f"
	awk -v n="$2" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f\n", n / (b - a)}'
}

mem_state() { # DIR SIZE_MIB
	[ "$BENCH_MEM" = asis ] || mem_write "$1" "$2" >/dev/null
}

mem_floor() { # DIR SIZE_MIB
	local first again reporting=off
	first=$(mem_write "$1" "$2")
	again=$(mem_write "$1" "$2")
	[ -e /sys/module/page_reporting ] && reporting=on
	echo "writing $2 MiB into a new file in $1: $first MiB/s with memory as it was, $again MiB/s at once again (free page reporting $reporting; runs here: BENCH_MEM=$BENCH_MEM)"
}
