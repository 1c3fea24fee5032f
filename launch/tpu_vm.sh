#!/usr/bin/env bash
# Run a command on every worker of a Cloud TPU VM slice:  launch/tpu_vm.sh [--dry-run] NAME ZONE -- CMD...
#
# Calls `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command ...`. Every worker
# needs the repository at ~/gsjax (GSJAX_REMOTE_DIR) and Python 3.11 (GSJAX_PYTHON, default
# python3.11). There it creates .venv if missing, installs the package with the tpu extra
# (`pip install -e ".[tpu]"`: libtpu; again only when pyproject.toml changed), then runs CMD with
# .venv/bin first on PATH and GSJAX_DISTRIBUTED=auto, so gsjax.parallel.initialize_distributed calls
# jax.distributed.initialize(), which finds the slice's workers from the TPU VM metadata.
#
# --dry-run prints the gcloud command line and the command every worker runs, and calls nothing.
# GSJAX_GCLOUD_FLAGS: extra gcloud flags, split on spaces (e.g. "--project=P --internal-ip").
set -euo pipefail

usage_line="[--dry-run] NAME ZONE -- CMD..."
help_lines="2,12p"
source "$(dirname "$0")/common.sh"
parse_options "$@"
set -- "${args[@]}"
[[ $# -ge 2 && $1 != -- && $2 != -- ]] || usage
name=$1 zone=$2; shift 2
[[ $name != -* && $zone != -* ]] || usage
[[ ${1:-} == -- ]] && shift
[[ $# -ge 1 ]] || { printf '%s: no command given after NAME ZONE\n' "$me" >&2; usage; }

default_remote_dir='~/gsjax'
remote_dir=${GSJAX_REMOTE_DIR:-$default_remote_dir}
if [[ $remote_dir == "~" ]]; then remote_cd='~'
elif [[ $remote_dir == "~/"* ]]; then remote_cd="~/$(q "${remote_dir#\~/}")"
else remote_cd=$(q "$remote_dir"); fi
py=$(q "${GSJAX_PYTHON:-python3.11}")

stamp=.venv/.installed-tpu-vm
worker="cd $remote_cd"
worker+=" && { test -x .venv/bin/python || $py -m venv .venv; }"
worker+=" && { test $stamp -nt pyproject.toml || { .venv/bin/python -m pip install --quiet -e '.[tpu]' && touch $stamp; }; }"
worker+=" && exec env PATH=\"\$PWD/.venv/bin:\$PATH\" PYTHONUNBUFFERED=1 GSJAX_DISTRIBUTED=auto $(qwords "$@")"

read -r -a extra_flags <<< "${GSJAX_GCLOUD_FLAGS:-}"
gcloud=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all "${extra_flags[@]}" --command "$worker")

if [[ $dry_run -eq 1 ]]; then
  printf '# from here:\n%s\n# on every worker:\n%s\n' "$(qwords "${gcloud[@]}")" "$worker"
  exit 0
fi
command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
exec "${gcloud[@]}"
