# Shared by the launch scripts (sourced, not run): --dry-run aware execution,
# shell quoting for printed commands, and the trainer-flag conventions.
#
# Trainer flags are recognised anywhere on a launch script's command line:
#   --config=FILE[:ARG]   --workdir=DIR   --config.a.b=VALUE   (passed through)
# and everything after a literal `--` is passed to the trainer verbatim.

DRY_RUN=${DRY_RUN:-0}
TRAIN_ARGS=()
CONFIG=""
WORKDIR=""
MODULE="reparam_jax.train"

die() { echo "error: $*" >&2; exit 2; }

# Prints its arguments as one shell-quoted command line that can be pasted back.
quote() {
  local out="" a q="'"
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//$q/$q\\$q$q}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or only prints it under --dry-run.
run() {
  if (( DRY_RUN )); then quote "$@"; else "$@"; fi
}

# Returns 0 (and records the flag) when $1 is a trainer flag.
take_train_arg() {
  case "$1" in
    --config=*) CONFIG="${1#--config=}"; TRAIN_ARGS+=("$1") ;;
    --workdir=*) WORKDIR="${1#--workdir=}"; TRAIN_ARGS+=("$1") ;;
    --config.*=*) TRAIN_ARGS+=("$1") ;;
    *) return 1 ;;
  esac
}

require_train_args() {
  [[ -n "$CONFIG" ]] || die "missing --config=FILE (the trainer's config)"
  [[ -n "$WORKDIR" ]] || die "missing --workdir=DIR"
  local path="${CONFIG%%:*}"
  [[ -f "$path" ]] || die "config file $path does not exist"
}

# The repository root (the launch scripts live in <root>/launch).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Python of the project's virtual environment when there is one, else python3.
default_python() {
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then echo "$REPO_ROOT/.venv/bin/python"; else echo python3; fi
}
