# Sourced by the bench scripts (scripts/pgo-build.sh, loadtest/workers.sh): starts a server in
# dev mode on loopback ports of the kernel's choosing and waits until it prints its HTTP origin.
#
#   dev_server_start BIN LOG [serve arguments...]   sets $server (pid) and $url; returns 1,
#                                                    with the log on stderr, if it did not start
dev_server_start() {
  local bin=$1 log=$2
  shift 2
  url=
  "$bin" serve --dev --http 127.0.0.1:0 --media-port 0 "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    url=$(sed -n 's#^ *http *\(http://[^ ]*\).*#\1#p' "$log" | head -n1)
    [[ -n $url ]] && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  return 1
}
