# shellcheck shell=bash
# Sourced by deploy/dataflow/build.sh and launch.sh: deploy/lib.sh, then what is Dataflow's own
# (required settings, the image's and the template's names).

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

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
