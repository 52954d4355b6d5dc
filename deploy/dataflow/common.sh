# shellcheck shell=bash
# Sourced by deploy/dataflow/build.sh and launch.sh: the image name, errors, --print.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() {
  echo "${PROG}: $*" >&2
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

require() {
  local name
  for name in "$@"; do
    [[ -n ${!name:-} ]] || die "set ${name}"
  done
}

# IMAGE, or the Artifact Registry name build.sh pushes to: REGION-docker.pkg.dev/PROJECT/REPOSITORY/winnow:TAG
# (REPOSITORY defaults to winnow, TAG to Winnow's version in pyproject.toml).
image_name() {
  if [[ -n ${IMAGE:-} ]]; then
    echo "$IMAGE"
    return
  fi
  require PROJECT REGION
  local tag=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")}
  [[ -n $tag ]] || die "set TAG (or IMAGE): no version in pyproject.toml"
  echo "${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY:-winnow}/winnow:${tag}"
}

# TEMPLATE_PATH, or BUCKET/templates/winnow-TAG.json.
template_path() {
  if [[ -n ${TEMPLATE_PATH:-} ]]; then
    echo "$TEMPLATE_PATH"
    return
  fi
  [[ -n ${BUCKET:-} ]] || die "set TEMPLATE_PATH (gs://.../winnow.json) or BUCKET (gs://...)"
  local image
  image=$(image_name)
  echo "${BUCKET%/}/templates/winnow-${image##*:}.json"
}
