#!/usr/bin/env bash
# Builds a profile-guided release binary of `moien` at target/release/moien-pgo (`make pgo`): an
# instrumented build forwards the standard load scenarios on loopback for a short while, and
# its branch and call counts steer the final build's inlining and code layout.
# Gain and commands: docs/PERFORMANCE.md, "Tenth pass". Usage: scripts/pgo-build.sh
# (PGO_TRAIN_SECONDS, default 12: how long each training load runs after its warm-up).
# Needs the Rust toolchain's llvm-tools (installed here through rustup when missing), because
# the profile format follows rustc's own LLVM, not the system's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
pgo=$target_dir/pgo
secs=${PGO_TRAIN_SECONDS:-12}

say() { printf 'pgo: %s\n' "$*" >&2; }

profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f 2>/dev/null | head -n1)
if [[ -z $profdata ]]; then
  command -v rustup >/dev/null || {
    say "no llvm-profdata for rustc's LLVM and no rustup to install llvm-tools with"
    exit 1
  }
  say "installing rustup's llvm-tools (llvm-profdata matching rustc's LLVM)"
  rustup component add llvm-tools >&2
  profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -n1)
fi
[[ -n $profdata ]] || { say "no llvm-profdata in $(rustc --print sysroot)"; exit 1; }

say "building the load tester and the instrumented server"
cargo build --release -p moien-loadtest >&2
rm -rf "$pgo/raw"
mkdir -p "$pgo/raw"
# Own target directories: other RUSTFLAGS would otherwise rebuild target/release each time.
RUSTFLAGS="-Cprofile-generate=$pgo/raw" \
  cargo build --release --bin moien --target-dir "$pgo/gen" >&2

source scripts/dev-server.sh
server=
trap '[[ -n $server ]] && kill -TERM $server 2>/dev/null || true' EXIT
dev_server_start "$pgo/gen/release/moien" "$pgo/train-server.log" ||
  { say "the instrumented server did not start"; exit 1; }

train() {
  say "training: $*"
  "$target_dir/release/moien-loadtest" run "$@" --url "$url" --sfu-pid "$server" \
    --duration "${secs}s" --warmup 3s --quiet --out "$pgo/train" >/dev/null
}

# The standard scenarios at the bench's sizes, and the shapes around them (a large room,
# simulcast, WHEP viewers): the profile should weigh what production runs.
train audio-conference --rooms 4 --room-size 8
train audio-conference --rooms 1 --room-size 40
train video-conference --rooms 2 --room-size 5 --video-layers 360p
train video-conference --rooms 1 --room-size 6 --simulcast
train livestream --viewers 30 --video-layers 720p
train livestream --viewers 10 --viewer-protocol whep
train many-small-rooms --rooms 12 --video-layers 360p

# A clean exit writes the counts (SIGTERM is the server's orderly shutdown).
kill -TERM $server
wait $server || true
trap - EXIT
ls "$pgo"/raw/*.profraw >/dev/null 2>&1 || { say "the server wrote no profile"; exit 1; }
"$profdata" merge -o "$pgo/moien.profdata" "$pgo"/raw/*.profraw

say "building the optimised server"
RUSTFLAGS="-Cprofile-use=$pgo/moien.profdata" \
  cargo build --release --bin moien --target-dir "$pgo/use" >&2
mkdir -p "$target_dir/release"
cp "$pgo/use/release/moien" "$target_dir/release/moien-pgo"
say "done: $target_dir/release/moien-pgo"
