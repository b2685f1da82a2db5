#!/usr/bin/env bash
# Runs bgmat training on every worker of a Cloud TPU VM (single host or pod
# slice): ship the code, make or reuse a venv, then start `bgmat.main
# --multihost` on all workers at once (jax.distributed.initialize() finds the
# other workers from the TPU metadata).
#
#   launch/tpu_vm.sh --name my-v4-32 --zone us-central2-b [--project P] \
#       [--dry-run] [--git URL [--ref REF]] [--remote-dir DIR] [--venv DIR] \
#       [--python PYTHON] [--skip-setup] \
#       -- --config configs/matting.py --workdir gs://my-bucket/runs/matting
#
# Code: by default the local checkout (tracked and untracked, not ignored
# files) is packed and copied to every worker with `tpu-vm scp --worker=all`
# and unpacked over --remote-dir; with --git URL each worker clones (once) and
# then fetches and checks out --ref. Unstaged deletions make tar fail: commit
# or `git rm` them first.
# Setup is idempotent: the venv is created only when missing, then
# `pip install -e . "$JAX_SPEC"` (JAX_SPEC defaults to "jax[tpu]"; pip keeps
# it inside the pyproject's jax range). bgmat needs Python >= 3.11: on images
# whose python3 is older pass e.g. --python python3.11.
# Remote paths are relative to the remote home unless absolute; --venv is
# relative to --remote-dir. The workdir should be a gs:// path (or a shared
# file system): every worker writes its part of each checkpoint there.
# --dry-run prints every command, one a line, and runs none.
set -euo pipefail

# quote: prints its arguments as one shell-safe line (launch/quote.sh).
# shellcheck source=launch/quote.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

name=''
zone=''
project=''
dry_run=0
git_url=''
git_ref='main'
remote_dir='bgmat'
venv='.venv'
python='python3'
skip_setup=0
jax_spec="${JAX_SPEC:-jax[tpu]}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --git) git_url="$2"; shift 2 ;;
    --ref) git_ref="$2"; shift 2 ;;
    --remote-dir) remote_dir="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --skip-setup) skip_setup=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "--name and --zone are required" >&2
  usage
fi
if [[ $# -eq 0 ]]; then
  echo "give the bgmat.main arguments after --" >&2
  usage
fi

gcloud_flags=("--zone=${zone}")
if [[ -n "$project" ]]; then
  gcloud_flags+=("--project=${project}")
fi

run() {
  if [[ "$dry_run" == 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

# One command on every worker; a failure on any worker fails the launcher.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all \
    --command="$1"
}

rdir="$(quote "$remote_dir")"
rvenv="$(quote "$venv")"

if [[ "$skip_setup" == 0 ]]; then
  if [[ -z "$git_url" ]]; then
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    archive="${TMPDIR:-/tmp}/bgmat-src-${name}.tar.gz"
    list_cmd=(git -C "$repo" ls-files -z --cached --others --exclude-standard)
    tar_cmd=(tar -C "$repo" --null -T - -czf "$archive")
    if [[ "$dry_run" == 1 ]]; then
      printf '%s | %s\n' "$(quote "${list_cmd[@]}")" "$(quote "${tar_cmd[@]}")"
    else
      "${list_cmd[@]}" | "${tar_cmd[@]}"
    fi
    run gcloud compute tpus tpu-vm scp "$archive" "${name}:bgmat-src.tar.gz" \
      "${gcloud_flags[@]}" --worker=all
    fetch="mkdir -p ${rdir} && tar -xzf bgmat-src.tar.gz -C ${rdir} && cd ${rdir}"
  else
    # Clone only once, so that reruns reuse the checkout (and its venv).
    fetch="{ test -d ${rdir}/.git || git clone --quiet $(quote "$git_url") ${rdir}; }"
    fetch+=" && cd ${rdir} && git fetch --quiet origin $(quote "$git_ref")"
    fetch+=" && git checkout --quiet --detach FETCH_HEAD"
  fi
  setup="${fetch}"
  setup+=" && { test -x ${rvenv}/bin/python || $(quote "$python") -m venv ${rvenv}; }"
  setup+=" && ${rvenv}/bin/python -m pip install --quiet --upgrade pip"
  setup+=" && ${rvenv}/bin/python -m pip install --quiet -e . $(quote "$jax_spec")"
  on_all_workers "$setup"
fi

on_all_workers "cd ${rdir} && ${rvenv}/bin/python -m bgmat.main --multihost $(quote "$@")"
