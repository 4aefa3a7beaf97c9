#!/usr/bin/env bash
# Train on this machine (CPU or the local GPUs), appending output to WORKDIR/log.txt.
#
#   launch/local.sh [--gpus=0,1] [--cpu] [--python=PY] [--module=M] [--no-log] [--dry-run] \
#       --config=configs/lm/shakespeare_char.py --workdir=runs/sc [--config.a.b=v ...] [-- ...]
#
# --gpus     sets CUDA_VISIBLE_DEVICES (default: all visible GPUs)
# --cpu      forces JAX onto the CPU (JAX_PLATFORMS=cpu)
# --python   interpreter (default: .venv/bin/python when present, else python3)
# --no-log   do not tee the output into WORKDIR/log.txt
# --dry-run  print the commands, run nothing
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON="$(default_python)"
ENV_VARS=()
LOG=1
while (( $# )); do
  if take_train_arg "$1"; then shift; continue; fi
  case "$1" in
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --gpus=*) ENV_VARS+=("CUDA_VISIBLE_DEVICES=${1#--gpus=}") ;;
    --cpu) ENV_VARS+=("JAX_PLATFORMS=cpu") ;;
    --python=*) PYTHON="${1#--python=}" ;;
    --module=*) MODULE="${1#--module=}" ;;
    --no-log) LOG=0 ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (trainer overrides look like --config.a.b=value)" ;;
  esac
  shift
done
require_train_args

CMD=(env PYTHONUNBUFFERED=1 "${ENV_VARS[@]}" "$PYTHON" -m "$MODULE" "${TRAIN_ARGS[@]}")
run mkdir -p "$WORKDIR"
if (( LOG )); then
  if (( DRY_RUN )); then
    echo "$(quote "${CMD[@]}") 2>&1 | tee -a $(quote "$WORKDIR/log.txt")"
  else
    "${CMD[@]}" 2>&1 | tee -a "$WORKDIR/log.txt"
    exit "${PIPESTATUS[0]}"
  fi
else
  run "${CMD[@]}"
fi
