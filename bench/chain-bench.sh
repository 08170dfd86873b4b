#!/usr/bin/env bash
# The storage chain's performance figures (issue #6, "Performance"), measured in one run on
# this machine with the release binary and four `qsfs serve` backends on loopback:
#
#   1. sequential write throughput through the mount, three ways on the same workload:
#        mount    `qsfs mount` (the engine alone, no tier)
#        off      `qsfs up` with offload effectively off (segments never seal during the run)
#        off8     `qsfs up --no-offload` with the segments of onbig (8 MiB): the engine seals as
#                 often as with offload on, but nothing is uploaded (and no cuts are taken)
#        onbig    `qsfs up` with offload running (8 MiB segments sealed after 2 s), cap above
#                 the workload: the uploads compete for CPU and disk but never hold writes back
#        on       the same with a 64 MiB cap: past the cap writes wait for uploads (throttle)
#      and the ratios on/off (goal: offload costs <= 25 %, i.e. ratio >= 0.75), against both
#      baselines: off8 isolates the uploads, off also counts the smaller segments' seals. off,
#      off8 and onbig run side by side and are written in rounds, back to back, and each ratio
#      is the median over the rounds of the ratio within a round;
#   2. `qsfs recover` time for 1 GiB in 10,000 files (goal <= 10 s);
#   3. cold 4 KiB read latency p50/p99 from evicted segments, on the recovered root, where every
#      segment is in the backends only; one read per distinct 4 MiB stripe (goal p99 <= 50 ms).
#
# Usage: bench/chain-bench.sh            (needs root and /dev/fuse, like the tests)
#   QSFS_BIN        the binary (default target/release/qsfs; build with
#                   `cargo build --release -p qsfs-cli`)
#   BENCH_DIR       where roots and backends live (default a fresh dir under /tmp)
#   NODES_DIR       where the four backends keep their data instead (e.g. /dev/shm): in a real
#                   deployment the nodes are other machines, so their disk writes do not share
#                   the local disk with the engine; on one disk the uploads of 2+2 shards add
#                   twice the written bytes to the same disk the workload writes to
#   WRITE_MIB       size of the sequential write workload (default 512)
#   SEG             segment size of the off8/onbig runs (default 8MiB, small so that a short run
#                   seals and uploads many segments; `qsfs up`'s own default is 64MiB)
#   RECOVER_FILES   files in the recover data set (default 10000)
#   RECOVER_MIB     its total size (default 1024)
#   REPEAT          runs of each write workload (rounds of off/off8/onbig), best time and
#                   median paired ratio reported (default 3; the machine is shared, single runs
#                   vary by 2x)
#   ONLY=write      only the write throughput figures (skips recover and cold reads, which
#                   take minutes: the 10,000-file data set is written with an fsync per file)
#   CPU=1           print where the CPU went during the offload-on write (cap above the
#                   workload): seconds per thread name of `qsfs up`, and of the backends
#   KEEP=1          keep BENCH_DIR afterwards
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${QSFS_BIN:-$here/target/release/qsfs}"
WRITE_MIB="${WRITE_MIB:-512}"
SEG="${SEG:-8MiB}"
RECOVER_FILES="${RECOVER_FILES:-10000}"
RECOVER_MIB="${RECOVER_MIB:-1024}"
REPEAT="${REPEAT:-3}"
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release -p qsfs-cli" >&2; exit 1; }
DIR="${BENCH_DIR:-$(mktemp -d /tmp/qsfs-chain-bench.XXXXXX)}"
mkdir -p "$DIR"
NODES="$DIR"
if [ -n "${NODES_DIR:-}" ]; then NODES=$(mktemp -d "$NODES_DIR/qsfs-chain-nodes.XXXXXX"); fi
export QSFS_LOG="${QSFS_LOG:-warn}"
unset QSFS_PASSPHRASE QSFS_ROOT

PY="$DIR/helper.py"
cat >"$PY" <<'EOF'
import json, os, random, socket, subprocess, sys, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def resp(port, *args):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode(); out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out); r = s.recv(65536); s.close(); return r.decode(errors="replace").strip()

def wait_ping(port):
    end = time.time() + 30
    while time.time() < end:
        try:
            if resp(port, "PING") == "+PONG": return
        except OSError: pass
        time.sleep(0.05)
    sys.exit("serve on %d did not answer" % port)

def seqwrite(path, mib):
    # One file written sequentially in 1 MiB writes from a pre-made random buffer, then fsync.
    buf = os.urandom(16 << 20)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(mib):
        off = (i % 16) << 20
        os.write(fd, buf[off:off + (1 << 20)])
    os.fsync(fd); os.close(fd)
    dt = time.perf_counter() - t
    print("%.3f" % dt)

def manyfiles(mnt, n, total_mib):
    size = (total_mib << 20) // n
    buf = os.urandom(size + (1 << 20))
    t = time.perf_counter()
    for i in range(n):
        d = os.path.join(mnt, "d%03d" % (i // 100))
        os.makedirs(d, exist_ok=True)
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        off = (i * 7919) % (1 << 20)
        os.write(fd, buf[off:off + size]); os.fsync(fd); os.close(fd)
    print("%.3f" % (time.perf_counter() - t))

def status(binary, root):
    r = subprocess.run([binary, "status", "--root", root, "--json"], capture_output=True)
    try: return json.loads(r.stdout)
    except ValueError: return None

def drain(binary, root, seal_after, timeout=1800):
    # backlog_segments == 0 and stayed so longer than seal_after plus two status periods
    end = time.time() + timeout; zero = None; t0 = time.time()
    while time.time() < end:
        s = status(binary, root)
        if s is not None and s.get("backlog_segments") == 0:
            zero = zero or time.time()
            if time.time() - zero >= seal_after + 5:
                print("%.1f %s" % (zero - t0, json.dumps(s))); return
        else: zero = None
        time.sleep(0.5)
    sys.exit("backlog did not drain: %s" % status(binary, root))

def coldreads(mnt, n, total_mib, samples):
    # Files were written in order, so file i sits near byte i*size of the data stream: one
    # file per 4 MiB window hits a distinct stripe of a distinct part of a segment.
    size = (total_mib << 20) // n
    per = max(1, (4 << 20) // size)
    picks = [w * per + random.randrange(per) for w in range(n // per)]
    random.shuffle(picks); picks = picks[:samples]
    lat = []
    for i in picks:
        p = os.path.join(mnt, "d%03d" % (i // 100), "f%05d" % i)
        fd = os.open(p, os.O_RDONLY)
        off = random.randrange(max(1, size // 4096)) * 4096
        t = time.perf_counter(); b = os.pread(fd, 4096, off); dt = time.perf_counter() - t
        os.close(fd)
        assert len(b) == min(4096, size - off), (p, off, len(b))
        lat.append(dt * 1000)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
    print("%d %.2f %.2f %.2f" % (len(lat), q(0.5), q(0.99), lat[-1]))

cmd = sys.argv[1]
if cmd == "port": print(free_port())
elif cmd == "provision":
    port = int(sys.argv[2]); wait_ping(port)
    for ns in ("data", "meta"):
        r = resp(port, "NSNEW", ns)
        if r != "+OK" and "exist" not in r: sys.exit("NSNEW %s: %s" % (ns, r))
elif cmd == "seqwrite": seqwrite(sys.argv[2], int(sys.argv[3]))
elif cmd == "manyfiles": manyfiles(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "drain": drain(sys.argv[2], sys.argv[3], float(sys.argv[4]))
elif cmd == "cpu":
    # CPU seconds (user+system) per thread name of each pid: "name seconds" lines
    tck = os.sysconf("SC_CLK_TCK"); out = {}
    for pid in sys.argv[2:]:
        tdir = "/proc/%s/task" % pid
        for t in os.listdir(tdir) if os.path.isdir(tdir) else []:
            try: st = open("%s/%s/stat" % (tdir, t)).read()
            except OSError: continue
            name = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            key = ("serve:" if pid != sys.argv[2] else "up:") + name.rstrip("0123456789-")
            out[key] = out.get(key, 0) + (int(f[11]) + int(f[12])) / tck
    for k in sorted(out): print(k, "%.2f" % out[k])
elif cmd == "cpudiff":
    a = dict(l.split() for l in open(sys.argv[2]) if l.strip())
    b = dict(l.split() for l in open(sys.argv[3]) if l.strip())
    for k in sorted(b):
        d = float(b[k]) - float(a.get(k, 0))
        if d >= 0.01: print("  %-28s %6.2f s" % (k, d))
elif cmd == "coldreads": coldreads(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
EOF

pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -uz "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
  [ "${KEEP:-0}" = 1 ] || [ "$NODES" = "$DIR" ] || rm -rf "$NODES"
}
trap cleanup EXIT

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
wait_mounted() {
  local m=$1 pid=$2 i
  for i in $(seq 1 1200); do
    is_mounted "$m" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "qsfs exited before mounting $m" >&2; return 1; }
    sleep 0.05
  done
  echo "timeout mounting $m" >&2; return 1
}
# Stops a mount process with SIGTERM and waits for it (a clean flush and unmount).
stop() {
  local pid=$1
  kill -TERM "$pid"
  wait "$pid" || true
}

# --- four backends -------------------------------------------------------------------------
ports=()
for i in 0 1 2 3; do
  port=$(python3 "$PY" port)
  "$BIN" serve --port "$port" --data "$NODES/node$i/data" --index "$NODES/node$i/index" \
    >"$DIR/node$i.log" 2>&1 &
  pids+=($!)
  python3 "$PY" provision "$port"
  ports+=("$port")
done
list() { local ns=$1 out="" p; for p in "${ports[@]}"; do out+="\"zdb://127.0.0.1:$p/$ns\", "; done; echo "${out%, }"; }

# config PREFIX LOCAL_CAP SEGMENT_SIZE SEAL_AFTER → stdout
config() {
  cat <<EOF
local_cap = "$2"
segment_size = "$3"
seal_after = $4
metrics = "127.0.0.1:$(python3 "$PY" port)"
prefix = "$1"
data_shards = 2
parity_shards = 2
[kdf]
memory_kib = 65536
iterations = 3
parallelism = 1
[meta]
backends = [$(list meta)]
[[groups]]
backends = [$(list data)]
EOF
}

# up NAME CONFIG_TEXT [ARGS…] → starts `qsfs up` on DIR/NAME/mnt with root DIR/NAME/root; sets
# UP_PID
up() {
  local name=$1 root="$DIR/$1/root" mnt="$DIR/$1/mnt"
  mkdir -p "$root" "$mnt"
  [ -f "$root/qsfs.toml" ] || printf '%s\n' "$2" >"$root/qsfs.toml"
  [ -f "$root/qsfs.key" ] || { echo "chain bench passphrase" >"$root/qsfs.key"; chmod 600 "$root/qsfs.key"; }
  "$BIN" up "$mnt" --root "$root" --config "$root/qsfs.toml" --keyfile "$root/qsfs.key" "${@:3}" \
    >>"$DIR/$name.log" 2>&1 &
  UP_PID=$!
  pids+=("$UP_PID")
  mounts+=("$mnt")
  wait_mounted "$mnt" "$UP_PID"
}

# best_write MNT [ROOT]: REPEAT sequential writes of WRITE_MIB to new files; with ROOT, the
# backlog drains before each run so runs do not queue behind each other. Prints the best time.
best_write() {
  local mnt=$1 root=${2:-} best="" i t
  for i in $(seq 1 "$REPEAT"); do
    [ -z "$root" ] || python3 "$PY" drain "$BIN" "$root" 2 >/dev/null
    t=$(python3 "$PY" seqwrite "$mnt/seq$i.bin" "$WRITE_MIB")
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}

echo "# qsfs chain benchmark — $(date -u +%FT%TZ), $(nproc) cores, backends: 4 × qsfs serve on loopback, 2+2" >&2
echo "# dir $DIR, backends' data in $NODES" >&2

# --- 1. sequential write throughput --------------------------------------------------------
echo "sequential write of $WRITE_MIB MiB, best of $REPEAT ..." >&2
mkdir -p "$DIR/mount/root" "$DIR/mount/mnt"
"$BIN" mount "$DIR/mount/mnt" --root "$DIR/mount/root" >"$DIR/mount.log" 2>&1 &
mpid=$!; pids+=("$mpid"); mounts+=("$DIR/mount/mnt")
wait_mounted "$DIR/mount/mnt" "$mpid"
t_mount=$(best_write "$DIR/mount/mnt")
stop "$mpid"

# The three offload configurations run side by side, and each round writes to all three back
# to back, in a rotating order: disk throughput on a shared machine drifts 2x within minutes, so
# only ratios of runs taken moments apart mean anything. Their median over the rounds is the
# figure; best times are printed too.
#   off    one segment larger than the workload, never sealed by age during the run
#          (3 GiB is the engine's largest segment: keep WRITE_MIB x REPEAT below it);
#   off8   `--no-offload` with the segments of onbig: seals as often, uploads nothing;
#   onbig  offload on, cap above the workload: uploads compete for CPU and disk but never hold
#          writes back (its backlog drains before each of its runs, so runs do not queue).
[ $((WRITE_MIB * REPEAT)) -lt 3000 ] || echo "warning: WRITE_MIB x REPEAT >= 3 GiB: the offload-off segment seals" >&2
up off "$(config bench-off $((64 << 30)) 3GiB 86400)"
PID_OFF=$UP_PID
up off8 "$(config bench-off8 $((64 << 30)) "$SEG" 2)" --no-offload
PID_OFF8=$UP_PID
up onbig "$(config bench-onbig $((64 << 30)) "$SEG" 2)"
PID_ONBIG=$UP_PID
# one_write NAME ROUND → seconds
# Each write starts with the page cache clean (`sync`): otherwise a run pays for writing back
# the run before it, whichever configuration that was.
one_write() {
  [ "$1" != onbig ] || python3 "$PY" drain "$BIN" "$DIR/onbig/root" 2 >/dev/null
  sync
  python3 "$PY" seqwrite "$DIR/$1/mnt/seq$2.bin" "$WRITE_MIB"
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
order=(off off8 onbig)
t_off="" t_off8="" t_onbig="" r_off=() r_off8=()
[ "${CPU:-0}" != 1 ] || python3 "$PY" cpu "$PID_ONBIG" "${pids[@]:0:4}" >"$DIR/cpu.before"
for i in $(seq 1 "$REPEAT"); do
  declare -A t=()
  for n in "${order[@]}"; do t[$n]=$(one_write "$n" "$i"); done
  echo "round $i (${order[*]}): off ${t[off]} s, off8 ${t[off8]} s, onbig ${t[onbig]} s" >&2
  t_off=$(min "$t_off" "${t[off]}"); t_off8=$(min "$t_off8" "${t[off8]}"); t_onbig=$(min "$t_onbig" "${t[onbig]}")
  r_off+=("$(echo "${t[off]} / ${t[onbig]}" | bc -l)")
  r_off8+=("$(echo "${t[off8]} / ${t[onbig]}" | bc -l)")
  order=("${order[@]:1}" "${order[0]}")
done
m_off=$(median "${r_off[@]}")
m_off8=$(median "${r_off8[@]}")
if [ "${CPU:-0}" = 1 ]; then
  python3 "$PY" cpu "$PID_ONBIG" "${pids[@]:0:4}" >"$DIR/cpu.write"
  python3 "$PY" drain "$BIN" "$DIR/onbig/root" 2 >/dev/null
  python3 "$PY" cpu "$PID_ONBIG" "${pids[@]:0:4}" >"$DIR/cpu.drain"
  echo "CPU of the offload-on process and the backends during the rounds:" >&2
  python3 "$PY" cpudiff "$DIR/cpu.before" "$DIR/cpu.write" >&2
  echo "CPU after them, until the backlog drained:" >&2
  python3 "$PY" cpudiff "$DIR/cpu.write" "$DIR/cpu.drain" >&2
fi
python3 "$PY" drain "$BIN" "$DIR/onbig/root" 2 >/dev/null
stop "$PID_OFF"; stop "$PID_OFF8"; stop "$PID_ONBIG"

# Offload on with a 64 MiB cap: once over it, writes wait for uploads (the throttle).
up on "$(config bench-on 64MiB 8MiB 2)"
t_on=$(best_write "$DIR/on/mnt" "$DIR/on/root")
drain_on=$(python3 "$PY" drain "$BIN" "$DIR/on/root" 2)
stop "$UP_PID"

mibs() { [ -n "$1" ] || { echo n/a; return; }; printf "%.1f" "$(echo "$WRITE_MIB / $1" | bc -l)"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] || { echo n/a; return; }; printf "%.2f" "$(echo "$1 / $2" | bc -l)"; }
write_table() {
  echo
  echo "| measure | value | goal |"
  echo "|---|---|---|"
  echo "| seq write $WRITE_MIB MiB, qsfs mount (no tier) | $(mibs "$t_mount") MiB/s (${t_mount} s) | |"
  echo "| seq write, qsfs up, offload off | $(mibs "$t_off") MiB/s (${t_off} s) | |"
  echo "| seq write, qsfs up --no-offload, $SEG segments | $(mibs "$t_off8") MiB/s (${t_off8} s) | |"
  echo "| seq write, qsfs up, offload on, cap above the workload | $(mibs "$t_onbig") MiB/s (${t_onbig} s) | |"
  echo "| seq write, qsfs up, offload on, 64 MiB cap (throttled by uploads) | $(mibs "$t_on") MiB/s (${t_on} s) | |"
  echo "| ratio on / off ($SEG segments both), cap above the workload, median of $REPEAT paired rounds | $(printf "%.2f" "$m_off8") | >= 0.75 |"
  echo "| ratio on / off, cap above the workload, median of $REPEAT paired rounds | $(printf "%.2f" "$m_off") | >= 0.75 |"
  echo "| ratio off $SEG segments / off | $(ratio "$t_off" "$t_off8") | |"
  echo "| ratio on / off, 64 MiB cap | $(ratio "$t_off" "$t_on") | |"
  echo "| ratio offload off / qsfs mount | $(ratio "$t_mount" "$t_off") | |"
  echo "| backlog drained after the 64 MiB-cap writes | ${drain_on%% *} s | |"
}
if [ "${ONLY:-}" = write ]; then
  write_table
  exit 0
fi

# --- 2. recover: 1 GiB in 10,000 files ----------------------------------------------------
echo "recover data set: $RECOVER_MIB MiB in $RECOVER_FILES files ..." >&2
up rec "$(config bench-rec 64MiB 8MiB 2)"
t_files=$(python3 "$PY" manyfiles "$DIR/rec/mnt" "$RECOVER_FILES" "$RECOVER_MIB")
drain_rec=$(python3 "$PY" drain "$BIN" "$DIR/rec/root" 2)
kill -KILL "$UP_PID"; wait "$UP_PID" 2>/dev/null || true
fusermount3 -uz "$DIR/rec/mnt" || true
find "$DIR/rec/root" -mindepth 1 -maxdepth 1 ! -name qsfs.toml ! -name qsfs.key -exec rm -rf {} +
t0=$(date +%s.%N)
"$BIN" recover --root "$DIR/rec/root" --config "$DIR/rec/root/qsfs.toml" \
  --keyfile "$DIR/rec/root/qsfs.key" >>"$DIR/rec.log" 2>&1
t_recover=$(echo "$(date +%s.%N) - $t0" | bc)
engine_after=$(du -sb "$DIR/rec/root/engine" | cut -f1)

# --- 3. cold 4 KiB reads from evicted segments --------------------------------------------
up rec ""
read -r n p50 p99 pmax < <(python3 "$PY" coldreads "$DIR/rec/mnt" "$RECOVER_FILES" "$RECOVER_MIB" 256)
stop "$UP_PID"

write_table
echo "| write $RECOVER_FILES files / $RECOVER_MIB MiB (fsync each) | ${t_files} s | |"
echo "| backlog drained after those writes | ${drain_rec%% *} s | |"
echo "| qsfs recover, $RECOVER_MIB MiB in $RECOVER_FILES files | $(printf "%.2f" "$t_recover") s (engine after: $engine_after bytes) | <= 10 s |"
echo "| cold 4 KiB pread, evicted segments ($n reads, distinct stripes) | p50 ${p50} ms, p99 ${p99} ms, max ${pmax} ms | p99 <= 50 ms |"
