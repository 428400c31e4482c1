#!/usr/bin/env bash
# The three-target comparison: builds in release, runs the standard scenarios against Moien,
# Janus (Debian's package, started with a generated loopback config) and the bare forwarder,
# each BENCH_REPEAT times with the targets alternating, plus capacity ramps on Moien (audio and
# video conferences) and runs at 70 % of the capacity each found. Each round's runs go to
# target/bench/round-N.json, the ramps' to capacity.json, the runs at 70 % of capacity to
# share-N.json (one file a round: a results file keeps one run per measurement);
# target/bench/results.json gets each scenario and target's median run, and the ratios printed
# at the end are those of the medians.
#
#   loadtest/bench.sh                      # everything (~55 minutes on 2 cores)
#   BENCH_REPEAT=1 BENCH_DURATION=15s loadtest/bench.sh   # one longer run each
#   BENCH_TARGETS="moien bare" BENCH_RAMP=0 loadtest/bench.sh
#   BENCH_PGO=0 loadtest/bench.sh          # the plain release build instead of the PGO one
#
# Environment: CARGO_TARGET_DIR (default target), BENCH_DURATION (10s), BENCH_WARMUP (4s),
# BENCH_REPEAT (3), BENCH_TARGETS ("moien janus bare"), BENCH_RAMP (1), BENCH_NICE (0: niceness
# of the runs), BENCH_PGO (1: Moien is the profile-guided build of scripts/pgo-build.sh, the
# build docs/OPERATIONS.md recommends for production; about 10 more minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
duration=${BENCH_DURATION:-10s}
rounds=${BENCH_REPEAT:-3}
warmup=${BENCH_WARMUP:-4s}
targets=${BENCH_TARGETS:-moien janus bare}
ramp=${BENCH_RAMP:-1}
pgo=${BENCH_PGO:-1}
nice_level=${BENCH_NICE:-0}
out=target/bench
results=$out/results.json

echo "== building (release)"
cargo build --release -p moien -p moien-loadtest
lt="$target_dir/release/moien-loadtest"
server="$target_dir/release/moien"
if [[ $pgo == 1 ]]; then
    echo "== building the profile-guided server (scripts/pgo-build.sh)"
    scripts/pgo-build.sh
    server="$target_dir/release/moien-pgo"
fi

if [[ " $targets " == *" janus "* ]] && ! command -v janus >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing janus (Debian package)"
        apt-get install -y janus >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y janus >/dev/null; }
    else
        echo "!! janus is not installed and cannot be installed here: skipping the Janus target"
        targets=${targets//janus/}
    fi
fi

mkdir -p "$out"
rm -rf "$results" "$out"/round-* "$out"/share-* "$out/capacity.json"
failures=0

# Each run's reports (JSON with its timeline, HTML) go to $reports: one folder per round, so
# that a run whose tail stands out can be looked at after the bench.
reports=$out
run() {
    local name=$1 file=$2; shift 2
    echo "== $name"
    if ! nice -n "$nice_level" "$lt" run "$@" --server-bin "$server" --out "$reports" \
        --results "$file" --quiet; then
        echo "!! $name failed"
        failures=$((failures + 1))
    fi
}

# The standard scenarios' parameters, by name.
scenario_args() {
    case $1 in
        audio-conference) echo "--rooms 4 --room-size 8" ;;
        video-conference) echo "--rooms 2 --room-size 5 --video-layers 360p" ;;
        livestream) echo "--viewers 30 --video-layers 720p" ;;
        many-small-rooms) echo "--rooms 12 --video-layers 360p" ;;
    esac
}

# Targets alternate within each scenario and every round repeats all of them, so that a slow
# minute of this shared machine falls on all targets alike; the ratios come from each
# target's median run (`moien-loadtest median`).
for round in $(seq "$rounds"); do
    reports=$out/round-$round
    mkdir -p "$reports"
    for scenario in audio-conference video-conference livestream many-small-rooms; do
        for t in $targets; do
            # shellcheck disable=SC2046 # the arguments are meant to split
            run "$scenario on $t (round $round of $rounds)" "$out/round-$round.json" "$scenario" \
                --target "$t" $(scenario_args "$scenario") --duration "$duration" --warmup "$warmup"
        done
    done
done
reports=$out

# A capacity ramp on Moien, then runs of Moien and of the bare forwarder at 70 % of the
# capacity found, alternating, once per round like the standard scenarios: the goals of
# docs/PERFORMANCE.md are judged there (packets and Mbit per CPU-second, latency), on the
# median run, since one run on this shared machine can be 10-30 % off. Arguments: scenario,
# room size, step (rooms), warm-up at 70 %, then the scenario's other options.
ramp_and_share() {
    local scenario=$1 size=$2 step=$3 warm=$4 rooms
    shift 4
    run "$scenario ramp on moien" "$out/capacity.json" "$scenario" --target moien --room-size "$size" \
        --ramp --ramp-step "$step" --step-duration 6s --step-settle 3s --max-participants 480 "$@"
    if rooms=$("$lt" capacity "$out/capacity.json" --scenario "$scenario" --share 0.7 --group-size "$size"); then
        for round in $(seq "$rounds"); do
            for t in moien bare; do
                [[ " $targets " == *" $t "* ]] || continue
                run "$scenario at 70% of capacity ($rooms rooms) on $t (round $round of $rounds)" \
                    "$out/share-$round.json" "$scenario" --target "$t" --rooms "$rooms" --room-size "$size" \
                    --duration "$duration" --warmup "$warm" "$@"
            done
        done
    else
        echo "!! no $scenario capacity found: skipping the run at 70 % of it"
        failures=$((failures + 1))
    fi
}

if [[ $ramp == 1 ]]; then
    # The bare forwarder at the same size shows what the measurement path itself (kernel, load
    # tester) adds. The speakers' audio is encoded before they join (loadtest/src/voices.rs),
    # so the warm-up only has to let the burst of joins settle.
    ramp_and_share audio-conference 8 2 10s
    # Video conferences of 5 at 360p, the standard scenario's rooms, for the Mbit goal.
    ramp_and_share video-conference 5 2 10s --video-layers 360p
fi

shopt -s nullglob
runs=("$out"/round-*.json "$out"/share-*.json)
[[ -f $out/capacity.json ]] && runs+=("$out/capacity.json")
if ((${#runs[@]} > 0)); then
    "$lt" median --out "$results" "${runs[@]}"
    echo
    echo "== results ($results)"
    "$lt" compare "$results"
else
    echo "!! no run produced a result"
    failures=$((failures + 1))
fi
echo
echo "moien/x: Moien's forwarded packets per server CPU-second divided by the target's."
echo "Reports (JSON with timelines, HTML) per run are in $out/round-N/ (and the ramp's in $out/)."
exit $((failures > 0))
