#!/usr/bin/env bash
# Starts N bgmat training processes on this machine over 127.0.0.1, each with
# its own forced CPU devices: the multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] [-n N] [-d DEVICES_PER_PROCESS] \
#       [-p PORT] -- --config configs/preseg.py:tiny --workdir /tmp/run
set -euo pipefail

# quote: prints its arguments as one shell-safe line (launch/quote.sh).
# shellcheck source=launch/quote.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

num_processes=2
devices=2
port=12355
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    -n) num_processes="$2"; shift 2 ;;
    -d) devices="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python}"

pids=()
# Ctrl-C or a kill of the launcher takes its processes down with it; they would
# otherwise wait for the missing peers until jax's heartbeat times out (and
# they ignore SIGINT: bash starts background jobs of a script that way).
# shellcheck disable=SC2329  # called by the trap
stop() {
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill "${pids[@]}" 2>/dev/null || true
  fi
  exit 130
}
trap stop INT TERM
for ((i = 0; i < num_processes; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu
       "$python" -m bgmat.main "$@"
       --coordinator_address "127.0.0.1:${port}" --num_processes "$num_processes"
       --process_id "$i")
  if [[ "$dry_run" == 1 ]]; then
    quote "${cmd[@]}"
  else
    "${cmd[@]}" &
    pids+=("$!")
  fi
done
status=0
for pid in ${pids[@]+"${pids[@]}"}; do
  wait "$pid" || status=$?
done
exit "$status"
