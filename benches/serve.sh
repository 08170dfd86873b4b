#!/usr/bin/env bash
# Benchmark of `qsfs serve` with redis-benchmark (package redis-tools).
#
# Starts a release `qsfs serve` on a fresh data directory and runs
#   redis-benchmark -t set,get -d 4096 -r 1000000 -n 200000
# unpipelined and with -P 16 (50 clients), over TCP and over a unix socket, then prints req/s.
# Random keys (-r) matter: without them every SET after the first is the identical-value
# no-op. The original 0-db on this machine kind: ~18,000 req/s pipelined over TCP (its 42 ms
# stall), 55,000-109,000 unpipelined. Goals: >= 90,000 pipelined, >= 1.5x the original
# unpipelined.
#
# The machine is shared and noisy, so when redis-server is installed the same workload also runs
# against it (no persistence) in the same run, and the ratio qsfs/redis is printed: a baseline
# measured under the same conditions.
#
# With ZDB_BIN=/path/to/zdb (a release build of the original 0-db) the same workloads also run
# against a fresh 0-db in the same run (user mode, same TCP port kind and unix socket, its stdout
# discarded), and its req/s and the ratio qsfs/0-db are printed: the goals above as measured here,
# not against figures taken on another day.
#
# The server's own CPU time per 1,000 requests (utime + stime from /proc, SET and GET together)
# is printed as well: unlike req/s it hardly depends on how busy the other processes are.
#
# Usage: benches/serve.sh [extra qsfs serve flags...]
#   N=requests, PORT=port to use, BIN=qsfs binary (default: build and use target/release/qsfs,
#   so an older build can be measured in the same conditions: BIN=/tmp/qsfs-before),
#   ZDB_BIN=original 0-db binary (optional).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
PORT=${PORT:-19900}
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing: apt-get install redis-tools" >&2; exit 1; }

if [ -z "${BIN:-}" ]; then
  cargo build --release -p qsfs-cli --quiet
  BIN=target/release/qsfs
fi
DATA=$(mktemp -d)
SOCK="$DATA/qsfs.sock"
PID=
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap 'redis_stop; zdb_stop; cleanup' EXIT

start() {
  rm -rf "$DATA/d"
  "$BIN" serve --data "$DATA/d" --port "$PORT" --socket "$SOCK" --dualnet "$@" 2>"$DATA/serve.log" &
  PID=$!
  for _ in $(seq 100); do
    redis-cli -p "$PORT" PING >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "qsfs serve did not start:" >&2; cat "$DATA/serve.log" >&2; exit 1
}

stop() {
  kill -TERM "$PID"; wait "$PID" || true; PID=
}

# Prints "SET GET" req/s of one redis-benchmark run; args: transport args.
measure() {
  redis-benchmark "$@" -t set,get -d 4096 -r 1000000 -n "$N" -c 50 -q 2>/dev/null \
    | tr '\r' '\n' | grep 'requests per second' \
    | awk '/^SET:/ {s=$2} /^GET:/ {g=$2} END {print s, g}'
}

REDIS_PID=
redis_start() {
  command -v redis-server >/dev/null || return 1
  redis-server --port $((PORT + 1)) --unixsocket "$DATA/redis.sock" --save '' --appendonly no \
    --daemonize no >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p $((PORT + 1)) PING >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
redis_stop() { [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=; }

# The original 0-db (ZDB_BIN), fresh for each case: TCP on PORT+2 and the unix socket zdb.sock.
ZDB_PID=
zdb_start() {
  [ -n "${ZDB_BIN:-}" ] || return 1
  rm -rf "$DATA/zdb"
  "$ZDB_BIN" --data "$DATA/zdb/data" --index "$DATA/zdb/index" --mode user --listen 127.0.0.1 \
    --port $((PORT + 2)) --socket "$DATA/zdb.sock" --dualnet >/dev/null 2>"$DATA/zdb.log" &
  ZDB_PID=$!
  for _ in $(seq 100); do redis-cli -p $((PORT + 2)) PING >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "0-db did not start:" >&2; cat "$DATA/zdb.log" >&2; exit 1
}
zdb_stop() { [ -n "$ZDB_PID" ] && kill "$ZDB_PID" 2>/dev/null; wait "$ZDB_PID" 2>/dev/null || true; ZDB_PID=; }

# Measures one other server (redis, zdb) on one case: sets OS and OG (SET and GET req/s), "-"
# without that server; args: server transport pipeline.
other() {
  local srv=$1 transport=$2 p=$3 args
  if [ "$transport" = tcp ]; then
    case $srv in redis) args=(-h 127.0.0.1 -p $((PORT + 1)));; zdb) args=(-h 127.0.0.1 -p $((PORT + 2)));; esac
  else
    case $srv in redis) args=(-s "$DATA/redis.sock");; zdb) args=(-s "$DATA/zdb.sock");; esac
  fi
  OS=-; OG=-
  if "${srv}_start"; then
    read -r OS OG < <(measure "${args[@]}" -P "$p")
    "${srv}_stop"
  fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# One output line: the columns of redis, then those of 0-db when ZDB_BIN is set.
row() {
  if [ -n "${ZDB_BIN:-}" ]; then
    printf '%-12s %12s %12s %14s %14s %8s %8s %12s %12s %12s %8s %8s\n' "$@"
  else
    printf '%-12s %12s %12s %14s %14s %8s %8s %12s\n' "${@:1:8}"
  fi
}

echo "qsfs serve benchmark: $N requests, 4 KiB values, 50 clients, random keys (-r 1000000)"
[ -z "${ZDB_BIN:-}" ] || echo "0-db: $ZDB_BIN, fresh for each case, in user mode; SET/GET /0db = qsfs req/s / 0-db req/s"
row case "qsfs SET/s" "qsfs GET/s" "redis SET/s" "redis GET/s" "SET x" "GET x" "qsfs ms/1k" \
  "0-db SET/s" "0-db GET/s" "SET /0db" "GET /0db"
for transport in tcp unix; do
  for p in 1 16; do
    if [ $transport = tcp ]; then args=(-h 127.0.0.1 -p "$PORT"); else args=(-s "$SOCK"); fi
    start "$@"
    cpu0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    read -r qs qg < <(measure "${args[@]}" -P "$p")
    cpu1=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    ticks=$(getconf CLK_TCK)
    # Two commands (SET and GET) of N requests each.
    ms=$(awk -v c=$((cpu1 - cpu0)) -v t="$ticks" -v n="$N" 'BEGIN { printf "%.2f", c * 1000 / t / (2 * n) * 1000 }')
    stop
    other redis "$transport" "$p"; rs=$OS; rg=$OG
    other zdb "$transport" "$p"; zs=$OS; zg=$OG
    row "$transport -P$p" "$qs" "$qg" "$rs" "$rg" "$(ratio "$qs" "$rs")" "$(ratio "$qg" "$rg")" "$ms" \
      "$zs" "$zg" "$(ratio "$qs" "$zs")" "$(ratio "$qg" "$zg")"
  done
done
