#!/usr/bin/env bash
# lseek and unlink+free cost through a real qsfs mount (warm, local engine): the paths that now
# go through Fs::without_fetch. Usage: seek-free-bench.sh WORKDIR QSFS_BIN
# Prints: lseeks per second and mount CPU µs per lseek; files unlinked+freed per second and
# mount CPU µs per file.
set -euo pipefail
WORK=$1
QSFS=$2
rm -rf "$WORK"
mkdir -p "$WORK/mnt" "$WORK/root"
"$QSFS" mount "$WORK/mnt" --root "$WORK/root" 2> "$WORK/qsfs.log" &
PID=$!
cleanup() {
  fusermount3 -u -z "$WORK/mnt" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do
  grep -q " $WORK/mnt " /proc/self/mountinfo && break
  sleep 0.1
done
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TCK=$(getconf CLK_TCK)
python3 - "$WORK/mnt/sparse" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
blk = b"x" * (128 << 10)
for i in range(0, 256, 2):  # 32 MiB: data and holes alternating per 128 KiB block
    os.pwrite(fd, blk, i * (128 << 10))
os.ftruncate(fd, 256 * (128 << 10))
os.fsync(fd)
os.close(fd)
PY
N=20000
c0=$(cpu)
t=$(python3 - "$WORK/mnt/sparse" $N <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
n = int(sys.argv[2]); size = 256 * (128 << 10)
t = time.perf_counter()
for i in range(n):
    off = (i * 7919 * 4096) % size
    try:
        os.lseek(fd, off, os.SEEK_DATA if i % 2 else os.SEEK_HOLE)
    except OSError:  # SEEK_DATA in the trailing hole: ENXIO
        pass
print(time.perf_counter() - t)
PY
)
c1=$(cpu)
echo "lseek: $(python3 -c "print(f'{$N/$t:.0f} ops/s, mount CPU {($c1-$c0)/$TCK/$N*1e6:.1f} us/op')")"
F=2000
mkdir "$WORK/mnt/d"
python3 - "$WORK/mnt/d" $F <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(b"y" * 4096)
os.sync()
PY
c0=$(cpu)
t=$(python3 - "$WORK/mnt/d" $F <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}/f{i}")
fd = os.open(d, os.O_RDONLY)
os.fsync(fd)  # the flush that frees them
os.close(fd)
print(time.perf_counter() - t)
PY
)
c1=$(cpu)
echo "unlink+free: $(python3 -c "print(f'{$F/$t:.0f} files/s, mount CPU {($c1-$c0)/$TCK/$F*1e6:.1f} us/file')")"
