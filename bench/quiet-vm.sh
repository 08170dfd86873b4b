#!/usr/bin/env bash
# Makes a benchmark VM's memory and idle CPUs behave more like a real machine's. Run it as root
# right before a benchmark script, in the same command (`bash bench/quiet-vm.sh && bash
# bench/chain-bench.sh`); it changes machine-wide settings, so nothing runs it by itself.
#
# Why: these VMs (Firecracker, virtio-balloon with free page reporting) hand every 2 MiB block
# of guest memory that stays free back to the host at once (`min_free_ms` 0). The next page
# allocated there is a host fault inside whatever first touches it: a `dd` into the page cache,
# a `memcpy` into a fresh buffer, the kernel zeroing a page. Measured on 2026-12-02: touching
# 19 GiB took 55 s (2.9 s per GiB); the same `dd if=/dev/zero bs=1M count=1024 conv=fsync` to
# ext4 took 1.08-1.15 s with reporting at once and 0.53-0.60 s with it held off, and a 1 GiB
# `dd` through `qsfs mount` 3.4-4.9 s before and 1.4-2.1 s after the warm-up below. Every
# figure that allocates memory (page cache included) swings with it, baselines too.
#
# What: holds free pages back from the host for as long as the kernel allows (`min_free_ms`
# 60000, its maximum) and lets more wait (`max_waiting_mib`), then touches WARM_MIB of memory
# once (default: all that is free, less 1 GiB) so the pages the benchmarks will use are backed.
# A page left free for over a minute is still reported (the touched pages too, once freed), so
# the warm-up holds for benchmarks that start within a minute and reuse what they free.
#
# Second, idle vCPUs: the VM boots with `haltpoll.guest_halt_poll_ns=0`, so an idle vCPU halts
# at once and waking it (a reply to a FUSE request, a TCP segment on loopback) is a VM exit and
# a host reschedule. Every FUSE round trip paid it: on 2026-12-02, fs-bench W5 (10,000 small
# files) took 2.74 s with 0 and 0.46 s with 200000, W6 `tar x` 4.81 s and 0.86 s, W4 cold
# 4 KiB random reads 17k and 96k IOPS; the plain disk's lines did not move. A machine without
# a hypervisor wakes an idle core in microseconds, which is what HALT_POLL_NS (default 200000,
# the guest haltpoll driver's own default) restores; HALT_POLL_NS=0 keeps the boot setting.
#
# `RESTORE=1 bash bench/quiet-vm.sh` puts the defaults back (0, 1024 and halt polling 0).
set -euo pipefail

H=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_NS=${HALT_POLL_NS:-200000}
if [[ -w $H ]]; then
    before=$(cat "$H")
    if [[ -n "${RESTORE:-}" ]]; then echo 0 >"$H"; else echo "$HALT_POLL_NS" >"$H"; fi
    echo "guest halt polling: $before -> $(cat "$H") ns"
fi

P=/sys/module/page_reporting/parameters
if [[ ! -w $P/min_free_ms ]]; then
    echo "no free page reporting to hold off here ($P): nothing to do"
    exit 0
fi
if [[ -n "${RESTORE:-}" ]]; then
    echo 0 >"$P/min_free_ms"
    echo 1024 >"$P/max_waiting_mib"
    echo "free page reporting: min_free_ms=$(cat $P/min_free_ms) max_waiting_mib=$(cat $P/max_waiting_mib)"
    exit 0
fi
echo "before: min_free_ms=$(cat $P/min_free_ms) max_waiting_mib=$(cat $P/max_waiting_mib) reported_kib=$(cat $P/reported_kib)"
echo 60000 >"$P/min_free_ms"
total_mib=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
echo "$total_mib" >"$P/max_waiting_mib"
free_mib=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
WARM_MIB=${WARM_MIB:-$((free_mib > 2048 ? free_mib - 1024 : 0))}
start=$(date +%s.%N)
python3 - "$WARM_MIB" <<'PY'
import mmap, sys
mib = int(sys.argv[1])
if mib > 0:
    m = mmap.mmap(-1, mib << 20)
    page = b"\x01" * (1 << 20)
    for off in range(0, mib << 20, 1 << 20):
        m[off:off + (1 << 20)] = page
PY
end=$(date +%s.%N)
echo "after: min_free_ms=$(cat $P/min_free_ms) max_waiting_mib=$(cat $P/max_waiting_mib); touched ${WARM_MIB} MiB in $(python3 -c "print(round($end - $start, 1))") s"
