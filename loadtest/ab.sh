#!/usr/bin/env bash
# Paired A/B of two server builds. Both run at the same time, each under its own load tester
# with the same scenario, so the machine's drift (15-30 % within an hour on a shared VM, see
# docs/PERFORMANCE.md, "Fourteenth pass") hits both alike. Run one after the other, the same
# binary measured 68-90k packets per CPU-second within 20 minutes; run side by side, a build
# against itself gave 0.987-1.016.
#
#   loadtest/ab.sh /tmp/moien-before target/release/moien
#   AB_ROUNDS=5 loadtest/ab.sh A B audio-conference --rooms 12 --room-size 8
#
# Arguments after the two binaries are the scenario and its options (default: audio-conference
# --rooms 16 --room-size 8, 128 participants on each server: together about 70 % of what this
# 2-core machine carries). AB_ROUNDS (4; which build starts first alternates by round),
# AB_WARMUP (8s), AB_DURATION (15s), AB_OUT (target/ab). Prints each round's packets per server
# CPU-second, the B/A ratio, both servers' own forwarding delay p99 and their waits for a CPU,
# then the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { sed -n '2,16p' "$0"; exit 2; }
a=$1
b=$2
shift 2
for bin in "$a" "$b"; do
    [[ -x $bin ]] || { echo "ab.sh: $bin is not an executable server binary" >&2; exit 2; }
done
scenario=("$@")
[[ ${#scenario[@]} -gt 0 ]] || scenario=(audio-conference --rooms 16 --room-size 8)
rounds=${AB_ROUNDS:-4}
out=${AB_OUT:-target/ab}
cargo build --release -p moien-loadtest
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for round in $(seq 1 "$rounds"); do
    pids=()
    # One side measured a few per cent more than the other for a while, whichever build it
    # ran (2026-12-06 evening), so that neither build always starts first, starts alternate.
    sides="a b"
    ((round % 2 == 0)) && sides="b a"
    for side in $sides; do
        bin=$a
        [[ $side == b ]] && bin=$b
        d="$out/$round-$side"
        rm -rf "$d"
        mkdir -p "$d"
        target/release/moien-loadtest run "${scenario[@]}" --target moien --server-bin "$bin" \
            --warmup "${AB_WARMUP:-8s}" --duration "${AB_DURATION:-15s}" --quiet \
            --out "$d" --results "$d/results.json" > "$d/log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "ab.sh: a load-tester run failed, see $out/$round-*/log" >&2; exit 1; }
    done
done
trap - EXIT
python3 - "$out" "$rounds" "$a" "$b" <<'EOF'
import json, statistics, sys

out, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def record(round_, side):
    with open(f"{out}/{round_}-{side}/results.json") as f:
        return json.load(f)[0]


print(f"A = {a}\nB = {b}")
print(f"{'round':>5} {'A pkt/cpu-s':>12} {'B pkt/cpu-s':>12} {'B/A':>7} {'A sfu p99':>10} {'B sfu p99':>10} "
      f"{'A wait':>9} {'B wait':>9}")


def p99(x):
    v = x.get("sfu_forwarding_delay_p99_ms")
    return "-" if v is None else f"{v:.2f} ms"


def wait(x):
    # The server's waits for a CPU (ms a second, summed over its threads): on this shared
    # machine, most of the p99's round-to-round spread.
    v = x.get("sfu_cpu_wait_ms_per_s")
    return "-" if v is None else f"{v:.0f} ms/s"


ratios = []
for r in range(1, rounds + 1):
    ra, rb = record(r, "a"), record(r, "b")
    ratio = rb["packets_per_cpu_second"] / ra["packets_per_cpu_second"]
    ratios.append(ratio)
    print(f"{r:>5} {ra['packets_per_cpu_second']:>12.0f} {rb['packets_per_cpu_second']:>12.0f} "
          f"{ratio:>7.3f} {p99(ra):>10} {p99(rb):>10} {wait(ra):>9} {wait(rb):>9}")
print(f"median B/A {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
EOF
