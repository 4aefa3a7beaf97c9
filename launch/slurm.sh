#!/usr/bin/env bash
# Submit one training run to SLURM (sbatch launch/slurm.sbatch); prints the job id.
#
#   launch/slurm.sh [--nodes=N] [--gpus-per-node=G] [--per=gpu|node] [--partition=P]
#       [--account=A] [--qos=Q] [--time=HH:MM:SS] [--cpus-per-task=C] [--mem=M]
#       [--job-name=NAME] [--sbatch-arg=RAW ...] [--python=PY] [--module=M] [--dry-run]
#       --config=configs/lm/shakespeare_char.py --workdir=runs/sc [--config.a.b=v ...] [-- ...]
#
# --per=gpu  (default) one process per GPU: N*G tasks, G per node
# --per=node one process per node driving all of its G GPUs
# The job's stdout/stderr are appended to WORKDIR/log.txt; the workdir must be on
# a filesystem shared by the nodes (checkpoints are written from every host).
# --dry-run prints the mkdir and sbatch commands and submits nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=1
GPUS=1
PER=gpu
JOB_NAME=""
PYTHON="$(default_python)"
SBATCH_ARGS=()
while (( $# )); do
  if take_train_arg "$1"; then shift; continue; fi
  case "$1" in
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS="${1#*=}" ;;
    --per=*) PER="${1#*=}" ;;
    --job-name=*) JOB_NAME="${1#*=}" ;;
    --partition=*|--account=*|--qos=*|--time=*|--cpus-per-task=*|--mem=*|--constraint=*|--reservation=*)
      SBATCH_ARGS+=("$1") ;;
    --sbatch-arg=*) SBATCH_ARGS+=("${1#--sbatch-arg=}") ;;
    --python=*) PYTHON="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (trainer overrides look like --config.a.b=value)" ;;
  esac
  shift
done
require_train_args
case "$PER" in
  gpu) TASKS_PER_NODE="$GPUS" ;;
  node) TASKS_PER_NODE=1 ;;
  *) die "--per must be gpu or node, got $PER" ;;
esac
[[ -n "$JOB_NAME" ]] || JOB_NAME="$(basename "$WORKDIR")"

CMD=(sbatch
  --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE"
  --gpus-per-node="$GPUS" --output="$WORKDIR/log.txt" --open-mode=append
  --export="ALL,REPARAM_PYTHON=$PYTHON,REPARAM_MODULE=$MODULE,REPARAM_PER=$PER"
  "${SBATCH_ARGS[@]}"
  "$REPO_ROOT/launch/slurm.sbatch" "${TRAIN_ARGS[@]}")
# SLURM does not create the directory of --output; the job would fail silently.
run mkdir -p "$WORKDIR"
run "${CMD[@]}"
