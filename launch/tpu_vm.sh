#!/usr/bin/env bash
# Run a gsjax command on every worker of a Cloud TPU VM: launch/tpu_vm.sh NAME ZONE -- CMD...
set -euo pipefail
name=$1 zone=$2; shift 2
[ "${1:-}" = "--" ] && shift
cmd="cd ~/gsjax && make install >/dev/null && .venv/bin/$*"
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$cmd"
