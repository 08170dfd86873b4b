#!/usr/bin/env bash
# The benchmark of issue #4, in one run:
#   * bare AES-256-GCM-SIV over the bytes of the file (baseline, one core);
#   * the pipeline alone storing and retrieving that file over in-memory backends (best of 3,
#     in the benchmark's process): its own cost, without the nodes and sockets that share the
#     machine's cores with it below;
#   * `qsfs backup store` of a random file, 2+2 over 4 local `qsfs serve` nodes (+ the same 4 as
#     replicated metadata backends);
#   * `qsfs backup retrieve` of it (verified byte for byte with cmp);
#   * the same retrieve after SIGKILLing 2 of the 4 nodes;
#   * peak RSS of each `qsfs backup` process (GNU time);
#   * CPU seconds (user + system) of the client and of the 4 servers together during each step,
#     since the servers share the cores with the client (GNU time and /proc/PID/stat).
# Each figure is printed with its ratio to the bare cipher (throughput) and to 0-stor v2's
# figures on this machine (issue #4: store ~3.3 s / 1.03 GB RSS, retrieve ~1.9 s, retrieve with 2
# of 4 nodes dead 7.7-10.3 s).
#
# Usage: crates/qsfs-backup/bench/backup-bench.sh            (256 MiB)
#        QSFS_BENCH_MIB=64 QSFS_BENCH_DIR=/dev/shm crates/qsfs-backup/bench/backup-bench.sh
#        QSFS_SERVE_ARGS=--sync ...   (nodes fsync every write before acknowledging it)
#        QSFS_BENCH_SETTINGS=$'stripe_size = 4194304\nparallel_stripes = 8' ...   (top-level config keys)
# Builds `qsfs` (release) and the cipher baseline first unless QSFS_BIN is set. Argon2id is set
# cheap so the figures measure the pipeline (like 0-stor v2's hex key); the default cost adds
# ~0.3 s and a transient 64 MiB to every command.
set -euo pipefail

MIB=${QSFS_BENCH_MIB:-256}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
if [[ -z "${QSFS_BIN:-}" ]]; then
    cargo build --release -q -p qsfs-cli
    QSFS_BIN=$ROOT/target/release/qsfs
fi
WORK=$(mktemp -d "${QSFS_BENCH_DIR:-${TMPDIR:-/tmp}}/backup-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PORTS=()
for i in 0 1 2 3; do
    port=$(free_port)
    mkdir -p "$WORK/node$i"
    # shellcheck disable=SC2086 # QSFS_SERVE_ARGS is a list of flags
    QSFS_LOG=warn "$QSFS_BIN" serve --port "$port" --data "$WORK/node$i/data" \
        --index "$WORK/node$i/index" ${QSFS_SERVE_ARGS:-} >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
    disown # no job notice when two of them are killed
    PORTS+=("$port")
done
for port in "${PORTS[@]}"; do
    for _ in $(seq 200); do
        [[ "$(redis-cli -p "$port" PING 2>/dev/null)" == PONG ]] && break
        sleep 0.05
    done
    redis-cli -p "$port" NSNEW data >/dev/null
    redis-cli -p "$port" NSNEW meta >/dev/null
done
list() { printf '"zdb://127.0.0.1:%s/'"$1"'", ' "${PORTS[@]}" | sed 's/, $//'; }
cat >"$WORK/backup.toml" <<EOF
data_shards = 2
parity_shards = 2
op_timeout_ms = 5000
down_for_ms = 5000
${QSFS_BENCH_SETTINGS:-}
[kdf]
memory_kib = 1024
iterations = 1
parallelism = 1
[meta]
backends = [$(list meta)]
[[groups]]
backends = [$(list data)]
EOF

SRC=$WORK/random.bin
head -c $((MIB << 20)) /dev/urandom >"$SRC"
BYTES=$((MIB << 20))

# The baselines, in this run on this file: the bare cipher, and the pipeline alone over
# in-memory backends (what the nodes and the sockets add is the difference to the store below).
if [[ -n "${QSFS_BENCH_CIPHER_BIN:-}" ]]; then
    BASE=$(QSFS_BENCH_MEMORY=1 QSFS_BENCH_CIPHER_FILE=$SRC "$QSFS_BENCH_CIPHER_BIN")
else
    BASE=$(QSFS_BENCH_MEMORY=1 QSFS_BENCH_CIPHER_FILE=$SRC cargo bench -q -p qsfs-backup \
        --bench pipeline 2>/dev/null)
fi
CIPHER=$(sed -n 's/^cipher_seconds=//p' <<<"$BASE")
MEM_STORE=$(sed -n 's/^memory_store_seconds=//p' <<<"$BASE")
MEM_GET=$(sed -n 's/^memory_retrieve_seconds=//p' <<<"$BASE")

export QSFS_PASSPHRASE=bench-passphrase QSFS_LOG=error
TICK=$(getconf CLK_TCK)
# CPU seconds (utime + stime) of the live servers so far.
servers_cpu() {
    local total=0 p ticks
    for p in "${PIDS[@]}"; do
        # A killed server (gone, or a zombie not reaped yet) counts for nothing.
        ticks=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '$1 != "Z" {print $12 + $13}') || true
        total=$((total + ${ticks:-0}))
    done
    python3 -c "print($total / $TICK)"
}
# Runs `qsfs backup ARGS...` under GNU time; sets SECS, RSS_KIB, CPU (client) and SRV (servers).
run() {
    local before
    before=$(servers_cpu)
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" "$QSFS_BIN" backup --config "$WORK/backup.toml" \
        --quiet "$@" >"$WORK/out.log" 2>&1 || { cat "$WORK/out.log"; exit 1; }
    read -r SECS RSS_KIB USR SYS <"$WORK/time"
    CPU=$(python3 -c "print(round($USR + $SYS, 2))")
    SRV=$(python3 -c "print(round($(servers_cpu) - $before, 2))")
}

run store "$SRC"
STORE=$SECS STORE_RSS=$RSS_KIB STORE_CPU="$CPU $SRV"
run retrieve "$SRC" -o "$WORK/back.bin"
GET=$SECS GET_RSS=$RSS_KIB GET_CPU="$CPU $SRV"
cmp "$SRC" "$WORK/back.bin"
rm -f "$WORK/back.bin"
kill -9 "${PIDS[0]}" "${PIDS[1]}"
run retrieve "$SRC" -o "$WORK/back.bin"
DEAD=$SECS DEAD_RSS=$RSS_KIB DEAD_CPU="$CPU $SRV"
cmp "$SRC" "$WORK/back.bin"

python3 - "$MIB" "$BYTES" "$CIPHER" "$STORE" "$GET" "$DEAD" "$STORE_RSS" "$GET_RSS" "$DEAD_RSS" \
    $STORE_CPU $GET_CPU $DEAD_CPU "$MEM_STORE" "$MEM_GET" <<'EOF'
import sys
mib, n, cipher, store, get, dead = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:7])
rss = [int(x) / 1024 for x in sys.argv[7:10]]
cpu = list(map(float, sys.argv[10:16]))
mem_store, mem_get = map(float, sys.argv[16:18])
gib = n / 2**30
print(f"object: {mib} MiB random, 2+2 over 4 local `qsfs serve` nodes")
print(f"bare AES-256-GCM-SIV     {cipher:7.3f} s  {gib / cipher:6.2f} GiB/s  (baseline)")
for name, t in [("pipeline alone: store", mem_store), ("pipeline alone: retrieve", mem_get)]:
    print(f"{name:<24} {t:7.3f} s  {gib / t:6.2f} GiB/s  {cipher / t:5.0%} of cipher  "
          "(in-memory backends, same process)")
rows = [("store", store, 3.3, rss[0]), ("retrieve", get, 1.9, rss[1]),
        ("retrieve, 2 of 4 dead", dead, 7.7, rss[2])]
for i, (name, t, zstor, r) in enumerate(rows):
    print(f"{name:<24} {t:7.3f} s  {gib / t:6.2f} GiB/s  {cipher / t:5.0%} of cipher  "
          f"{t / zstor:5.2f}x 0-stor v2 ({zstor} s)  peak RSS {r:6.1f} MiB  "
          f"CPU client {cpu[2 * i]:.2f} s servers {cpu[2 * i + 1]:.2f} s")
print(f"retrieve 2 dead / healthy: {dead / get:.2f}x (goal <= 1.5x)")
print(f"peak RSS max: {max(rss):.1f} MiB (goal <= 128 MiB; 0-stor v2 1.03 GB)")
EOF
