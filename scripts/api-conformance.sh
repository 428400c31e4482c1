#!/usr/bin/env bash
# The room admin API against its own OpenAPI description: starts `moien serve --dev` on free ports,
# mints an every-room admin token and runs schemathesis (PyPI) on /api/v1/openapi.json, checking
# that no request gets a 5xx and that every response conforms to the description (status, content
# type, headers, body schema). Installs schemathesis in target/schemathesis (a venv) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/schemathesis
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  echo "api-conformance: installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi

bin="${MOIEN_BIN:-target/debug/moien}"
[ -x "$bin" ] || cargo build --bin moien
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The API's own rate limit would answer 429 to a fuzzer's burst: off for this run.
MOIEN_LIMITS_API_RATE_PER_IP=0 MOIEN_TURN_LISTEN_UDP=127.0.0.1:0 MOIEN_TURN_LISTEN_TCP=127.0.0.1:0 \
  MOIEN_METRICS_LISTEN=127.0.0.1:0 \
  "$bin" serve --dev --http 127.0.0.1:0 --media-port 0 >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 100); do
  grep -q '^  media' "$work/out" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; echo "api-conformance: the server exited" >&2; exit 1; }
  sleep 0.1
done
url="$(sed -n 's/^ *http *\(http:\/\/[^ ]*\).*/\1/p' "$work/out" | head -n1)"
[ -n "$url" ] || { cat "$work/out" >&2; echo "api-conformance: no http line in the banner" >&2; exit 1; }
token="$(env -u MOIEN_SECRET -u MOIEN_CONFIG "$bin" token --room '*' --identity schemathesis --admin --ttl 1h)"

echo "api-conformance: schemathesis against $url/api/v1/openapi.json"
st="$PWD/$venv/bin/st"
# Its cache (.schemathesis/) goes to the scratch directory, not the work tree.
cd "$work"
"$st" run "$url/api/v1/openapi.json" \
  --url "$url" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${MOIEN_API_EXAMPLES:-40}" \
  --seed 7 \
  --no-color
