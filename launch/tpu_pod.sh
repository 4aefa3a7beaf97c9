#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice with `gcloud compute tpus tpu-vm`.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE [--project=P] [--accelerator-type=v4-32]
#       [--version=tpu-ubuntu2204-base] [--queued] [--spot]
#       [--steps=create,copy,install,run,fetch,delete] [--code=scp|git] [--repo=URL] [--ref=REF]
#       [--local-dir=DIR] [--log-name=NAME] [--module=M] [--dry-run]
#       --config=configs/lm/shakespeare_char.py --workdir=gs://BUCKET/runs/sc [--config.a.b=v ...]
#
# Steps (in this order, each optional):
#   create   tpu-vm create (or, with --queued, queued-resources create and wait for ACTIVE);
#            skipped when the TPU already exists
#   copy     --code=scp: tar this checkout (tracked + untracked, not ignored files), scp it
#            to every worker; --code=git: clone/fetch --repo and check out --ref on every worker
#   install  a Python 3.12 venv (uv) + `pip install -r requirements.txt -e .[tpu]` on every worker
#   run      the trainer on --worker=all (one process per host, with --distributed),
#            output tee'd to ~/reparam_logs/LOG_NAME.log on each worker
#   fetch    worker 0's log, metrics.jsonl and done.json into --local-dir, and the run's
#            point.json (its provenance) as --local-dir/point_remote.json
#   delete   delete the TPU (or the queued resource)
# On a multi-host slice the workdir must be shared by the hosts: use gs://.
# A failed run step still fetches and deletes; the script then exits non-zero.
# --dry-run prints every gcloud command and runs nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME=""
ZONE=""
PROJECT=""
ACCEL="v4-8"
VERSION="tpu-ubuntu2204-base"
QUEUED=0
SPOT=0
STEPS="create,copy,install,run,fetch,delete"
CODE=scp
REPO=""
REF=""
LOCAL_DIR=""
LOG_NAME=""
REMOTE_DIR="reparam_jax"  # relative to the home directory on the workers
while (( $# )); do
  if take_train_arg "$1"; then shift; continue; fi
  case "$1" in
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --steps=*) STEPS="${1#*=}" ;;
    --code=*) CODE="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --local-dir=*) LOCAL_DIR="${1#*=}" ;;
    --log-name=*) LOG_NAME="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (trainer overrides look like --config.a.b=value)" ;;
  esac
  shift
done
[[ -n "$NAME" ]] || die "missing --name=TPU_NAME"
[[ -n "$ZONE" ]] || die "missing --zone=ZONE (e.g. us-central2-b)"
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
for s in ${STEPS//,/ }; do
  case "$s" in create|copy|install|run|fetch|delete) ;; *) die "unknown step $s in --steps" ;; esac
done
if has_step run || has_step fetch; then require_train_args; fi
[[ -n "$LOG_NAME" ]] || LOG_NAME="$(basename "${WORKDIR:-run}")"
[[ -n "$LOCAL_DIR" ]] || LOCAL_DIR="${WORKDIR:-runs/$NAME}"
[[ "$LOCAL_DIR" != gs://* ]] || LOCAL_DIR="runs/tpu/$NAME/$LOG_NAME"

G=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || G+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
ssh_all() { run "${TPU[@]}" ssh "$NAME" "${G[@]}" --worker=all --command="$1"; }

if has_step create; then
  if (( ! DRY_RUN )) && "${TPU[@]}" describe "$NAME" "${G[@]}" >/dev/null 2>&1; then
    echo "[tpu_pod] $NAME exists; not creating it"
  elif (( QUEUED )); then
    EXTRA=(); (( ! SPOT )) || EXTRA+=(--spot)
    run "${QR[@]}" create "$NAME" --node-id="$NAME" "${G[@]}" --accelerator-type="$ACCEL" \
      --runtime-version="$VERSION" "${EXTRA[@]}"
    WAIT=("${QR[@]}" describe "$NAME" "${G[@]}" --format='value(state.state)')
    if (( DRY_RUN )); then
      echo "# repeated every 60 s until it prints ACTIVE:"; quote "${WAIT[@]}"
    else
      until [[ "$("${WAIT[@]}")" == ACTIVE ]]; do sleep 60; done
    fi
  else
    EXTRA=(); (( ! SPOT )) || EXTRA+=(--spot)
    run "${TPU[@]}" create "$NAME" "${G[@]}" --accelerator-type="$ACCEL" --version="$VERSION" \
      "${EXTRA[@]}"
  fi
fi

if has_step copy; then
  if [[ "$CODE" == scp ]]; then
    TARBALL="${TMPDIR:-/tmp}/reparam_jax_code_$NAME.tgz"
    if (( DRY_RUN )); then
      echo "(cd $(quote "$REPO_ROOT") && git ls-files -z --cached --others --exclude-standard" \
           "| tar --null --ignore-failed-read -czf $(quote "$TARBALL") -T -)"
    else
      (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -czf "$TARBALL" -T -)
    fi
    run "${TPU[@]}" scp "$TARBALL" "$NAME:reparam_jax_code.tgz" "${G[@]}" --worker=all
    # The copy has no .git: REVISION.json tells the runs' provenance which commit it is.
    COMMIT="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || true)"
    DIRTY=false; [[ -z "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || DIRTY=true
    if [[ -n "$COMMIT" ]]; then COMMIT="\"$COMMIT\""; else COMMIT=null; fi
    REVISION="{\"commit\": $COMMIT, \"dirty\": $DIRTY}"
    ssh_all "mkdir -p $REMOTE_DIR && tar -xzf reparam_jax_code.tgz -C $REMOTE_DIR && printf '%s\\n' $(printf %q "$REVISION") > $REMOTE_DIR/REVISION.json"
  elif [[ "$CODE" == git ]]; then
    [[ -n "$REPO" ]] || REPO="$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null)" \
      || die "--code=git needs --repo=URL (no origin remote here)"
    [[ -n "$REF" ]] || REF="$(git -C "$REPO_ROOT" rev-parse HEAD)"
    ssh_all "if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch --all --quiet; else git clone --quiet $(printf %q "$REPO") $REMOTE_DIR; fi && git -C $REMOTE_DIR checkout --quiet $(printf %q "$REF")"
  else
    die "--code must be scp or git, got $CODE"
  fi
fi

if has_step install; then
  # TPU VM images ship Python 3.10 and jax 0.12 needs >= 3.12: uv fetches a
  # Python 3.12 for the venv.  The `tpu` extra adds libtpu to the pinned jax.
  UV="~/.local/bin/uv"
  ssh_all "cd $REMOTE_DIR && (test -x $UV || python3 -m pip install -q --user uv) && (test -x .venv/bin/python || $UV venv -q --python 3.12 .venv) && $UV pip install -q --python .venv/bin/python -r requirements.txt -e '.[tpu]'"
fi

RC=0
if has_step run; then
  TRAIN_CMD="$(quote python -m "$MODULE" "${TRAIN_ARGS[@]}" --distributed) "
  ssh_all "set -o pipefail; cd $REMOTE_DIR && . .venv/bin/activate && mkdir -p ~/reparam_logs && PYTHONUNBUFFERED=1 ${TRAIN_CMD}2>&1 | tee -a ~/reparam_logs/$(quote "$LOG_NAME").log" || RC=$?
fi

if has_step fetch; then
  run mkdir -p "$LOCAL_DIR"
  run "${TPU[@]}" scp "$NAME:reparam_logs/$LOG_NAME.log" "$LOCAL_DIR/tpu_worker0.log" "${G[@]}" \
    --worker=0 || echo "[tpu_pod] could not fetch the log" >&2
  for f in metrics.jsonl done.json point.json; do
    to="$f"; [[ "$f" != point.json ]] || to=point_remote.json  # the launcher's own is local
    if [[ "$WORKDIR" == gs://* ]]; then
      run gcloud storage cp "$WORKDIR/$f" "$LOCAL_DIR/$to" || echo "[tpu_pod] no $f yet" >&2
    else
      # A relative workdir is relative to the code directory on the workers.
      remote="$WORKDIR"; [[ "$remote" == /* ]] || remote="$REMOTE_DIR/$remote"
      run "${TPU[@]}" scp "$NAME:$remote/$f" "$LOCAL_DIR/$to" "${G[@]}" --worker=0 \
        || echo "[tpu_pod] no $f yet" >&2
    fi
  done
fi

if has_step delete; then
  if (( QUEUED )); then
    run "${QR[@]}" delete "$NAME" "${G[@]}" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" "${G[@]}" --quiet
  fi
fi
exit "$RC"
