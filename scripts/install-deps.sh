#!/usr/bin/env bash
# Installs the system packages `make run` and `make test` need, when they are missing.
# Debian/Ubuntu only; uses apt as root or through sudo. Rust itself comes from rustup.
set -euo pipefail

what="${1:-test}"
packages=(pkg-config cmake libopus-dev)
if [ "$what" = test ]; then
  # chromium: browser tests; coturn: turnutils_uclient/turnutils_peer against our TURN server;
  # prometheus: tests/observability.rs runs /usr/bin/prometheus and promtool on loopback;
  # janus: the load tester's peer SFU (loadtest/tests/janus.rs).
  packages+=(chromium nodejs npm coturn prometheus janus)
  # python3-venv: scripts/api-conformance.sh installs schemathesis (PyPI) in a venv.
  packages+=(python3-venv)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere (nodesource, nvm): accept working binaries.
if command -v node >/dev/null 2>&1; then missing=("${missing[@]/nodejs}"); fi
if command -v npm >/dev/null 2>&1; then missing=("${missing[@]/npm}"); fi
read -r -a missing <<<"${missing[*]}"

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Only coturn's client tools are wanted; its daemon would hold port 3478.
  if printf '%s\n' "${missing[@]}" | grep -qx coturn; then
    $sudo systemctl disable --now coturn >/dev/null 2>&1 || true
    $sudo service coturn stop >/dev/null 2>&1 || true
  fi
  # Only the binaries are wanted: the tests start their own Prometheus on a free port; the
  # packaged daemon would listen on 9090 and scrape nothing of ours.
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    $sudo service prometheus stop >/dev/null 2>&1 || true
  fi
  # Janus too: the load tester starts its own, with a generated loopback configuration.
  if printf '%s\n' "${missing[@]}" | grep -qx janus; then
    $sudo systemctl disable --now janus >/dev/null 2>&1 || true
    $sudo service janus stop >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Install Rust (1.89 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
