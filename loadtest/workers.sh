#!/usr/bin/env bash
# Capacity with one media worker and with two (the issue's "two workers carry 1.8x one"),
# measured on a machine whose second core the load tester needs. Each media worker thread gets
# a CPU cgroup of its own, capped at WORKERS_CAP of one core, so a worker fills its cap long
# before the load tester runs out of room; the ramp then finds how many participants one
# capped worker carries and how many two carry, and the ratio is what a node gains from its
# second worker when nothing else is short. Needs root and the cgroup v1 `cpu` controller
# (/sys/fs/cgroup/cpu) for per-thread caps. Figures: docs/PERFORMANCE.md, "Two workers against
# one, each capped".
#
# Usage: loadtest/workers.sh [extra moien-loadtest run arguments]
#   WORKERS_BIN     server binary (target/release/moien; the ratio does not need the PGO build)
#   WORKERS_CAP     share of one core per worker (0.15)
#   WORKERS_REPEAT  rounds of (one worker, two workers) (2)
#   WORKERS_OUT     folder for the reports (target/bench/workers)
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${WORKERS_CAP:-0.15}
repeat=${WORKERS_REPEAT:-2}
out=${WORKERS_OUT:-target/bench/workers}
loadtest=target/release/moien-loadtest
bin=${WORKERS_BIN:-target/release/moien}
cg=/sys/fs/cgroup/cpu
period=10000 # µs: a short period keeps a capped worker's pauses short (at most 10 ms)

say() { printf 'workers: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

[[ -x $bin && -x $loadtest ]] ||
  die "build first: cargo build --release -p moien -p moien-loadtest (missing $bin or $loadtest)"
[[ $(id -u) == 0 ]] || die "needs root, to create CPU cgroups"
[[ -w $cg/tasks ]] || die "needs the cgroup v1 cpu controller at $cg (per-thread CPU caps)"
quota=$(awk -v c="$cap" -v p=$period 'BEGIN { if (c + 0 == c && c >= 0.05 && c <= 1) print int(c * p) }')
[[ -n $quota ]] || die "WORKERS_CAP must be a share of one core between 0.05 and 1, not '$cap'"
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "WORKERS_REPEAT must be a positive count"

server=
cleanup() {
  [[ -n $server ]] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  server=
  for d in "$cg"/moien-worker-*; do
    [[ -d $d ]] && rmdir "$d" 2>/dev/null || true
  done
}
trap cleanup EXIT

mkdir -p "$out"
rm -rf "$out"/round-*

# Starts the server with $1 workers, every room spread (pack_load 0), and caps each worker;
# sets $server and $url.
source scripts/dev-server.sh
url=
start() {
  local workers=$1 tids
  MOIEN_MEDIA_PACK_LOAD=0 dev_server_start "$bin" "$out/server-$workers.log" \
    --workers "$workers" || die "the server did not start"
  tids=$(grep -l '^moien-media-' /proc/"$server"/task/*/comm | awk -F/ '{print $5}')
  [[ $(wc -w <<<"$tids") == "$workers" ]] ||
    die "expected $workers media worker threads, found: $tids"
  local i=0
  for tid in $tids; do
    mkdir -p "$cg/moien-worker-$i"
    echo "$period" >"$cg/moien-worker-$i/cpu.cfs_period_us"
    echo "$quota" >"$cg/moien-worker-$i/cpu.cfs_quota_us"
    echo "$tid" >"$cg/moien-worker-$i/tasks"
    i=$((i + 1))
  done
}

for round in $(seq 1 "$repeat"); do
  for workers in 1 2; do
    say "round $round: $workers worker(s), each capped at $cap of a core"
    start "$workers"
    # Rooms of 4 added one at a time: a step is 4 participants, fine enough for a ratio.
    "$loadtest" run audio-conference --room-size 4 --ramp --ramp-step 1 \
      --step-duration 4s --step-settle 2s --url "$url" --sfu-pid "$server" --quiet \
      --out "$out/round-$round-$workers" "$@" >"$out/round-$round-$workers.txt" \
      2>"$out/round-$round-$workers.log" ||
      die "the load tester failed (status $?): $out/round-$round-$workers.log"
    say "$(grep -m1 '^ramp:' "$out/round-$round-$workers.txt")"
    cleanup
  done
done

python3 - "$out" "$cap" <<'EOF'
import glob, json, os, sys

out, cap = sys.argv[1], sys.argv[2]


def ramp(workers, rnd):
    rep = json.load(open(glob.glob(f"{out}/round-{rnd}-{workers}/*-ramp.json")[0]))
    r = rep["ramp"]
    ok = [s for s in r["steps"] if s["within_limits"]]
    pps = ok[-1]["rates"]["forwarded_packets_per_s"] if ok else 0.0
    return r["capacity_participants"], pps, r["stop_reason"]


print(f"audio-conference in rooms of 4, each media worker capped at {cap} of a core")
print("round  1 worker  2 workers  ratio   (participants carried; forwarded packets/s)")
ratios, rnd = [], 1
while all(os.path.isdir(f"{out}/round-{rnd}-{w}") for w in (1, 2)):
    (c1, p1, s1), (c2, p2, s2) = ramp(1, rnd), ramp(2, rnd)
    ratio = c2 / c1 if c1 else float("nan")
    ratios.append(ratio)
    print(f"{rnd:>5} {c1:>9} {c2:>10} {ratio:>5.2f}x   ({p1:.0f} and {p2:.0f} packets/s)")
    print(f"       one worker: {s1}\n       two workers: {s2}")
    rnd += 1
if ratios:
    print(f"mean ratio {sum(ratios) / len(ratios):.2f}x over {len(ratios)} round(s)")
EOF
