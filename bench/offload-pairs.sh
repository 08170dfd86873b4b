#!/usr/bin/env bash
# What offload costs a sequential write through `qsfs up` (issue #6: goal on / off >= 0.75),
# measured in pairs of fresh mounts so that nothing but offload differs within a pair.
#
# Each round starts `qsfs up` twice on a fresh root, once with `--no-offload` and once with
# offload on (the order alternates), with the same config: 8 MiB segments sealed after 2 s, a
# cap far above the workload, 2+2 over four `qsfs serve` nodes started once for the whole run.
# Each mount gets one write of WRITE_MIB from a random file in /dev/shm (1 MiB writes, then
# fsync), timed from the first write to the end of the fsync; then it is unmounted. Prints
# every pair and the median of on / off. `bench/chain-bench.sh` measures the same on long-lived
# mounts side by side; there, a round can land on the shared disk's slow minutes.
#
# Usage: bench/offload-pairs.sh   (root, /dev/fuse; `bash bench/quiet-vm.sh &&` first on a VM)
#   QSFS_BIN   the binary (default target/release/qsfs)
#   ROUNDS     pairs (default 5)
#   WRITE_MIB  size of each write (default 512)
#   BENCH_DIR  where the roots live (default a fresh dir under /var/tmp: the local disk)
#   NODES_DIR  where the nodes keep their data (default /dev/shm: in a deployment they are
#              other machines, whose disks the local writes do not share)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${QSFS_BIN:-$here/target/release/qsfs}"
ROUNDS="${ROUNDS:-5}"
WRITE_MIB="${WRITE_MIB:-512}"
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release -p qsfs-cli" >&2; exit 1; }
DIR="${BENCH_DIR:-$(mktemp -d /var/tmp/qsfs-offload-pairs.XXXXXX)}"
NODES=$(mktemp -d "${NODES_DIR:-/dev/shm}/qsfs-offload-nodes.XXXXXX")
SRC="$NODES/src.bin"
export QSFS_LOG="${QSFS_LOG:-warn}"
unset QSFS_PASSPHRASE QSFS_ROOT
pids=()
cleanup() {
  { grep -o " $DIR/[^ ]*/mnt " /proc/mounts || true; } | while read -r m; do fusermount3 -u -z "$m" || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR" "$NODES"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
head -c "$((WRITE_MIB << 20))" /dev/urandom >"$SRC"

list=""
for i in 0 1 2 3; do
  port=$(free_port)
  "$BIN" serve --port "$port" --data "$NODES/n$i/data" --index "$NODES/n$i/index" >"$NODES/n$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  redis-cli -p "$port" NSNEW meta >/dev/null
  redis-cli -p "$port" NSNEW data >/dev/null
  list+="\"zdb://127.0.0.1:$port/NS\", "
done
list=${list%, }

# one_write NAME [FLAGS] → seconds for WRITE_MIB written and fsynced through a fresh mount
one_write() {
  local name=$1 root="$DIR/$1/root" mnt="$DIR/$1/mnt" up t
  mkdir -p "$root" "$mnt"
  cat >"$root/qsfs.toml" <<EOF
local_cap = "$((64 << 30))"
segment_size = "8MiB"
seal_after = 2
prefix = "$name"
data_shards = 2
parity_shards = 2
[kdf]
memory_kib = 65536
iterations = 3
parallelism = 1
[meta]
backends = [${list//NS/meta}]
[[groups]]
backends = [${list//NS/data}]
EOF
  echo "offload pairs passphrase" >"$root/qsfs.key"
  chmod 600 "$root/qsfs.key"
  "$BIN" up "$mnt" --root "$root" --config "$root/qsfs.toml" --keyfile "$root/qsfs.key" "${@:2}" \
    >"$DIR/$name.log" 2>&1 &
  up=$!
  for _ in $(seq 300); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
  grep -q " $mnt " /proc/mounts || { echo "$name did not mount: $(tail -3 "$DIR/$name.log")" >&2; exit 1; }
  sync
  t=$(python3 - "$SRC" "$mnt/f" <<'PY'
import os, sys, time
src = open(sys.argv[1], "rb").read()
t = time.perf_counter()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for off in range(0, len(src), 1 << 20):
    os.write(fd, src[off:off + (1 << 20)])
os.fsync(fd)
os.close(fd)
print("%.3f" % (time.perf_counter() - t))
PY
)
  fusermount3 -u "$mnt"
  wait "$up" || true
  rm -rf "$DIR/$name"
  echo "$t"
}

echo "# offload pairs — $(date -u +%FT%TZ), $(nproc) cores, $ROUNDS rounds of $WRITE_MIB MiB" >&2
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    off=$(one_write "off$r" --no-offload); on=$(one_write "on$r")
  else
    on=$(one_write "on$r"); off=$(one_write "off$r" --no-offload)
  fi
  ratio=$(echo "$off / $on" | bc -l)
  ratios+=("$ratio")
  printf 'round %d: offload off %s s, on %s s, on / off %.2f\n' "$r" "$off" "$on" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END {
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "median on / off over %d pairs: %.2f (goal >= 0.75)\n", NR, m }'
