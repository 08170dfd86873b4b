#!/usr/bin/env bash
# Counts the FUSE requests the kernel sends to the mount under MOUNTPOINT while COMMAND runs,
# per opcode, from the kernel's fuse:fuse_request_send tracepoint (Linux >= 6.15, perf, root).
# With N, also prints requests per item (e.g. per file created).
#
#   crates/qsfs-fuse/bench/fuse-requests.sh MOUNTPOINT [N] -- COMMAND...
set -euo pipefail
MNT=$1; shift
N=1
if [ "${1:-}" != -- ]; then N=$1; shift; fi
[ "${1:-}" = -- ] && shift
command -v perf > /dev/null || { echo "perf is needed" >&2; exit 1; }
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing
[ -d /sys/kernel/tracing/events/fuse ] || { echo "the kernel has no fuse tracepoints" >&2; exit 1; }
# The tracepoint names the connection by the mount's device number (major:minor as a dev_t).
DEV=$(mountpoint -d "$MNT")
CONN=$(( (${DEV%%:*} << 20) | ${DEV##*:} ))
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
perf record -q -a -e fuse:fuse_request_send --filter "connection == $CONN" -o "$OUT" -- "$@" > /dev/null 2>&1
perf script -i "$OUT" 2> /dev/null | grep -o 'opcode [0-9]* ([A-Z_0-9]*)' | awk -v n="$N" '
  { c[$3]++; t++ }
  END {
    for (k in c) printf "  %-22s %8d  %6.2f per item\n", k, c[k], c[k] / n
    printf "  %-22s %8d  %6.2f per item\n", "total", t, t / n
  }' | sort -k2 -n -r
