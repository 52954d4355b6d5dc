#!/usr/bin/env bash
# Builds and pushes Winnow's Dataflow image, then the Flex Template spec that points at it.
set -euo pipefail
PROG=deploy/dataflow/build.sh
# shellcheck source=deploy/dataflow/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: deploy/dataflow/build.sh [--print]

Builds deploy/dataflow/Dockerfile (Docker with BuildKit, from the repository root), pushes the
image, and writes the Flex Template spec (gcloud dataflow flex-template build) with metadata.json.
The one image is both the template launcher and the workers' SDK container.

Environment:
  PROJECT, REGION        Google Cloud project and region (required unless IMAGE is given)
  REPOSITORY             Artifact Registry Docker repository (default: winnow)
  TAG                    image tag (default: Winnow's version in pyproject.toml)
  IMAGE                  full image name (default: REGION-docker.pkg.dev/PROJECT/REPOSITORY/winnow:TAG)
  TEMPLATE_PATH          gs:// path of the template spec (default: BUCKET/templates/winnow-TAG.json)
  BUCKET                 gs://bucket for the default TEMPLATE_PATH
  DRY_RUN=1 or --print   print the commands instead of running them

Authenticate Docker to Artifact Registry once: gcloud auth configure-docker REGION-docker.pkg.dev
USAGE
}

option() {
  die "unknown argument '$1'"
}
parse_args "$@"

image=$(image_name)
template=$(template_path)
project=()
if [[ -n ${PROJECT:-} ]]; then
  project=("--project=${PROJECT}")
fi

run_command env DOCKER_BUILDKIT=1 docker build --file "$ROOT/deploy/dataflow/Dockerfile" --tag "$image" "$ROOT"
run_command docker push "$image"
run_command gcloud dataflow flex-template build "$template" "${project[@]}" \
  --image="$image" --sdk-language=PYTHON --metadata-file="$ROOT/deploy/dataflow/metadata.json"
