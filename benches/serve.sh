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
# Usage: benches/serve.sh [extra qsfs serve flags...]   (N=requests, PORT=port to use)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
PORT=${PORT:-19900}
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing: apt-get install redis-tools" >&2; exit 1; }

cargo build --release -p qsfs-cli --quiet
BIN=target/release/qsfs
DATA=$(mktemp -d)
SOCK="$DATA/qsfs.sock"
PID=
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

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

run() { # label, then redis-benchmark transport args
  local label=$1; shift
  local out
  out=$(redis-benchmark "$@" -t set,get -d 4096 -r 1000000 -n "$N" -c 50 -q 2>/dev/null | tr '\r' '\n' | grep -E '^(SET|GET):' | tail -2)
  local set get
  set=$(echo "$out" | awk '/^SET:/ {print $2}')
  get=$(echo "$out" | awk '/^GET:/ {print $2}')
  printf '%-28s SET %10s req/s   GET %10s req/s\n' "$label" "$set" "$get"
}

echo "qsfs serve benchmark: $N requests, 4 KiB values, 50 clients, random keys (-r 1000000)"
for transport in tcp unix; do
  if [ $transport = tcp ]; then args=(-h 127.0.0.1 -p "$PORT"); else args=(-s "$SOCK"); fi
  for p in 1 16; do
    start "$@"
    run "$transport -P $p" "${args[@]}" -P "$p"
    stop
  done
done
