#!/usr/bin/env bash
# Submit one training run to SLURM (sbatch launch/slurm.sbatch), or a job array of
# runs (sbatch --array launch/slurm_array.sbatch); prints the job id.
#
#   launch/slurm.sh [--nodes=N] [--gpus-per-node=G] [--per=gpu|node] [--partition=P]
#       [--account=A] [--qos=Q] [--time=HH:MM:SS] [--cpus-per-task=C] [--mem=M]
#       [--job-name=NAME] [--sbatch-arg=RAW ...] [--python=PY] [--module=M] [--dry-run]
#       --config=configs/lm/shakespeare_char.py --workdir=runs/sc [--config.a.b=v ...] [-- ...]
#   launch/slurm.sh [same resource flags] --array-file=ROOT/slurm/array_X.txt
#       [--array-size=N] [--array-limit=K] [--signal-grace=S] [--no-requeue]
#
# --per=gpu  (default) one process per GPU: N*G tasks, G per node
# --per=node one process per node driving all of its G GPUs
# The job's stdout/stderr are appended to WORKDIR/log.txt; the workdir must be on
# a filesystem shared by the nodes (checkpoints are written from every host).
# --array-file: one run per line (its trainer arguments, shell-quoted); submits
#   sbatch --array=0-(N-1)%K (K = --array-limit, default 8, tasks at a time)
#   --requeue --signal=B:TERM@S (S = --signal-grace, default 120 s): a task
#   warned of its time limit checkpoints and is requeued, and resumes.
#   Each task appends to its run's WORKDIR/log.txt (ROOT/slurm/%A_%a.out gets
#   only what happens before the line is read).
# --dry-run prints the mkdir and sbatch commands and submits nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=1
GPUS=1
PER=gpu
JOB_NAME=""
PYTHON="$(default_python)"
SBATCH_ARGS=()
ARRAY_FILE=""
ARRAY_SIZE=""
ARRAY_LIMIT=8
GRACE=120
REQUEUE=1
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
    --array-file=*) ARRAY_FILE="${1#*=}" ;;
    --array-size=*) ARRAY_SIZE="${1#*=}" ;;
    --array-limit=*) ARRAY_LIMIT="${1#*=}" ;;
    --signal-grace=*) GRACE="${1#*=}" ;;
    --no-requeue) REQUEUE=0 ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (trainer overrides look like --config.a.b=value)" ;;
  esac
  shift
done
if [[ -z "$ARRAY_FILE" ]]; then require_train_args; fi
case "$PER" in
  gpu) TASKS_PER_NODE="$GPUS" ;;
  node) TASKS_PER_NODE=1 ;;
  *) die "--per must be gpu or node, got $PER" ;;
esac
EXPORT="ALL,REPARAM_PYTHON=$PYTHON,REPARAM_MODULE=$MODULE,REPARAM_PER=$PER,REPARAM_REPO=$REPO_ROOT"
RESOURCES=(--nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE" --gpus-per-node="$GPUS")

if [[ -n "$ARRAY_FILE" ]]; then
  (( ${#TRAIN_ARGS[@]} == 0 )) || die "--array-file takes the runs from the file; drop the trainer flags"
  if [[ -z "$ARRAY_SIZE" ]]; then
    [[ -f "$ARRAY_FILE" ]] || die "array file $ARRAY_FILE does not exist"
    ARRAY_SIZE="$(grep -c . "$ARRAY_FILE")"
  fi
  [[ "$ARRAY_SIZE" =~ ^[1-9][0-9]*$ ]] || die "--array-size must be a positive count, got $ARRAY_SIZE"
  [[ "$ARRAY_LIMIT" =~ ^[1-9][0-9]*$ ]] || die "--array-limit must be a positive count, got $ARRAY_LIMIT"
  [[ "$GRACE" =~ ^[0-9]+$ ]] || die "--signal-grace must be seconds, got $GRACE"
  OUT_DIR="$(dirname "$ARRAY_FILE")"
  # ROOT/slurm/array_X.txt: the job is named after ROOT (the sweep or experiment).
  [[ -n "$JOB_NAME" ]] || JOB_NAME="$(basename "$(dirname "$OUT_DIR")")"
  ARRAY_OPTS=(--array="0-$((ARRAY_SIZE - 1))%$ARRAY_LIMIT" --signal="B:TERM@$GRACE")
  (( ! REQUEUE )) || ARRAY_OPTS+=(--requeue)
  CMD=(sbatch --job-name="$JOB_NAME" "${ARRAY_OPTS[@]}" "${RESOURCES[@]}"
    --output="$OUT_DIR/%A_%a.out" --open-mode=append --export="$EXPORT"
    "${SBATCH_ARGS[@]}" "$REPO_ROOT/launch/slurm_array.sbatch" "$ARRAY_FILE")
  run mkdir -p "$OUT_DIR"
  run "${CMD[@]}"
  exit 0
fi

[[ -n "$JOB_NAME" ]] || JOB_NAME="$(basename "$WORKDIR")"

CMD=(sbatch
  --job-name="$JOB_NAME" "${RESOURCES[@]}" --output="$WORKDIR/log.txt" --open-mode=append
  --export="$EXPORT" "${SBATCH_ARGS[@]}"
  "$REPO_ROOT/launch/slurm.sbatch" "${TRAIN_ARGS[@]}")
# SLURM does not create the directory of --output; the job would fail silently.
run mkdir -p "$WORKDIR"
run "${CMD[@]}"
