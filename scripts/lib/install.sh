# Sourced by the scripts that install what they need from Debian's packages when it is missing.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# `install_missing COMMAND:PACKAGE ...`: each package whose command is not found (on the PATH or
# in /usr/sbin, where nginx lives), installed in one apt-get run.
install_missing() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The benchmarks' tools: wrk, nginx (nginx-light) and redis-server.
install_bench_tools() {
  install_missing wrk:wrk nginx:nginx-light redis-server:redis-server
}
