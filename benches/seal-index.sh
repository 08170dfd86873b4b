#!/usr/bin/env bash
# What seals cost as the index grows: N SETs of 100-byte values over a keyspace of N (about
# 0.63 N distinct keys) into `qsfs serve` with the smallest segments (512 KiB, so many seals),
# pipelined (redis-benchmark -P 16). Prints the SET rate, the bytes the server wrote (its
# /proc/PID/io write_bytes: segments, index snapshots, manifests) and its CPU. An engine that
# rewrote its whole index at every seal wrote 3,889 MiB for 130 MiB of data at N = 1,000,000
# (SNAPSHOT_AMORTIZE = 0 in crates/qsfs-store/src/namespace.rs); see CHANGELOG.md.
#
# Usage: bash benches/seal-index.sh [BIN] [N]   (defaults target/release/qsfs, 1000000)
set -euo pipefail
BIN=${1:-target/release/qsfs}
N=${2:-1000000}
command -v redis-benchmark >/dev/null || { echo "needs redis-benchmark (apt-get install redis-tools)" >&2; exit 1; }
D=$(mktemp -d "${TMPDIR:-/var/tmp}/seal-index.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
QSFS_LOG=warn "$BIN" serve --port "$port" --data "$D/data" --index "$D/index" --datasize 512k \
    --compact-every 0 >"$D/log" 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true; wait $P 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.05; done
io() { awk '/^write_bytes/ {print $2}' "/proc/$P/io"; }
cpu() { awk '{print $14 + $15}' "/proc/$P/stat"; }
w0=$(io) c0=$(cpu) s=$(date +%s.%N)
rate=$(redis-benchmark -p "$port" -t set -n "$N" -r "$N" -d 100 -P 16 -q 2>/dev/null | tr '\r' '\n' |
    grep -a "SET:" | tail -1)
e=$(date +%s.%N)
sleep 1 # the seal thread's last snapshot
w1=$(io) c1=$(cpu)
echo "$rate"
python3 - "$s" "$e" "$w0" "$w1" "$c0" "$c1" "$(getconf CLK_TCK)" "$(du -sm "$D/data" | cut -f1)" <<'PY'
import sys
s, e, w0, w1, c0, c1, tck, data = map(float, sys.argv[1:])
print(f"wall {e - s:.2f} s, server wrote {(w1 - w0) / 2**20:.0f} MiB for {data:.0f} MiB on disk, "
      f"server CPU {(c1 - c0) / tck:.2f} s")
PY
