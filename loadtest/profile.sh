#!/usr/bin/env bash
# Profiles the server during one load-tester run and prints where a forwarded packet's time
# goes, by stage and by code area, in µs per packet (docs/PERFORMANCE.md, "Sixth pass" and
# "Eighth pass"). Needs `perf` (Debian: linux-perf) and root or perf_event_paranoid <= 1.
#
#   loadtest/profile.sh audio-conference --rooms 4 --room-size 8
#   PROFILE_TARGET=bare loadtest/profile.sh audio-conference --rooms 4 --room-size 8
#   PROFILE_WARMUP=20s PROFILE_AFTER=28 loadtest/profile.sh audio-conference --rooms 22 --room-size 8
#
# PROFILE_TARGET (moien), PROFILE_WARMUP (6s), PROFILE_AFTER (seconds from the start to the
# recording, 12), PROFILE_SECONDS (8), PROFILE_OUT (target/profile), PROFILE_BIN (the server
# binary, target/release/moien, built first; another one, such as a copy of an older build, is
# profiled as it is, for an A/B).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0"; exit 2; }
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
target=${PROFILE_TARGET:-moien}
warmup=${PROFILE_WARMUP:-6s}
after=${PROFILE_AFTER:-12}
seconds=${PROFILE_SECONDS:-8}
out=${PROFILE_OUT:-target/profile}
bin=${PROFILE_BIN:-target/release/moien}
case $target in
    moien) pattern="$(basename "$bin") serve" ;;
    bare) pattern='moien-loadtest bare-forwarder' ;;
    *) echo "profile.sh: PROFILE_TARGET is moien or bare" >&2; exit 2 ;;
esac
mkdir -p "$out"
rm -f "$out/results.json"
if [[ -z ${PROFILE_BIN:-} ]]; then
    cargo build --release -p moien -p moien-loadtest
else
    cargo build --release -p moien-loadtest
fi
# The run lasts past the recording: the window is the recording plus a margin.
duration=$((seconds + 8))
target/release/moien-loadtest run "$@" --target "$target" --nice 0 --server-bin "$bin" \
    --duration "${duration}s" --warmup "$warmup" --quiet --out "$out" --results "$out/results.json" &
run=$!
trap 'kill $run 2>/dev/null || true' EXIT
sleep "$after"
pid=$(pgrep -f "$pattern" | head -1 || true)
[[ -n $pid ]] || { echo "profile.sh: no server process matching '$pattern' after ${after}s" >&2; exit 1; }
perf record -q -e cpu-clock -F 4000 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" -- sleep "$seconds"
wait $run
trap - EXIT
perf script -i "$out/perf.data" -F ip,sym 2>/dev/null > "$out/perf.txt"
python3 loadtest/tools/perf_stages.py "$out/perf.txt" "$out/results.json"
python3 loadtest/tools/perf_items.py "$out"
