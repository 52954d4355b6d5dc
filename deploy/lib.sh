# shellcheck shell=bash
# Sourced by the scripts under deploy/: errors, the argument loop with --print and --help, and
# running or printing commands. A script sets PROG (itself as run from the repository root, for
# "run PROG --help"), optionally PROG_NAME (the prefix of its errors, default PROG), and defines
# usage() before calling parse_args.

# The repository root.
# shellcheck disable=SC2034 # used by the scripts that source this file
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "${PROG_NAME:-$PROG}: $*" >&2
  echo "run ${PROG} --help for usage" >&2
  exit 2
}

# Prints a command so that a shell reads it back as the same words.
print_command() {
  local word out=() safe='^[A-Za-z0-9_./:=@%+,-]+$'
  for word in "$@"; do
    if [[ $word =~ $safe ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Runs a command, or prints it with --print / DRY_RUN=1.
run_command() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    print_command "$@"
  else
    "$@"
  fi
}

# As run_command, but the command replaces this shell.
exec_command() {
  if [[ ${DRY_RUN:-0} != 1 ]]; then
    exec "$@"
  fi
  print_command "$@"
}

# Reads the script's arguments in order: --print sets DRY_RUN=1, -h or --help prints usage and
# exits. Every other argument goes first to the script's option() function, where it defines one,
# which returns 0 when it has taken it; if not, `--` puts every argument after it in ARGS, and any
# other argument goes to ARGS.
parse_args() {
  ARGS=()
  while (($#)); do
    case $1 in
      --print) DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        if declare -F option >/dev/null && option "$1"; then
          :
        elif [[ $1 == -- ]]; then
          shift
          ARGS+=("$@")
          break
        else
          ARGS+=("$1")
        fi
        ;;
    esac
    shift
  done
}
