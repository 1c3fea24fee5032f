#!/usr/bin/env bash
# One process per GPU host: launch/gpu_hosts.sh HOSTS_FILE -- CMD...
# HOSTS_FILE has one ssh host per line; the first is the coordinator. Every host needs the repo at
# ~/gsjax with `make install` done.
set -euo pipefail
hosts_file=$1; shift
[ "${1:-}" = "--" ] && shift
mapfile -t hosts < <(grep -v '^\s*$' "$hosts_file")
coordinator="${hosts[0]}:${GSJAX_COORDINATOR_PORT:-12355}"
pids=()
for i in "${!hosts[@]}"; do
  ssh "${hosts[$i]}" "cd ~/gsjax && JAX_COORDINATOR_ADDRESS=$coordinator JAX_NUM_PROCESSES=${#hosts[@]} JAX_PROCESS_ID=$i .venv/bin/$*" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
