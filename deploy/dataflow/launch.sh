#!/usr/bin/env bash
# Launches a Winnow job on Dataflow: from the Flex Template (default) or directly with `winnow run`.
set -euo pipefail
PROG=deploy/dataflow/launch.sh
# shellcheck source=deploy/dataflow/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: deploy/dataflow/launch.sh [--print] [--direct] [-- further arguments]

Starts a Winnow job on Dataflow (Runner v2, workers in the deploy/dataflow image):
  default    gcloud dataflow flex-template run of the template that build.sh wrote; the launcher
             VM submits the job and returns; the job writes index/ and report.html itself
  --direct   winnow run --runner DataflowRunner from this machine, which needs Winnow installed
             (Python 3.11, the image's commit); it waits for the job, then writes index/ and
             report.html like a local run
Further arguments go to gcloud (default) or to winnow run and Beam (--direct).

Environment:
  PROJECT, REGION        Google Cloud project and region (required)
  INPUT, OUTPUT          URL lists (file, folder or glob; several separated by '|') and output folder
  CONFIG                 Winnow YAML config: gs://..., or deploy/configs/NAME.yaml (shipped in the image)
  ACCELERATOR            embed.accelerator: the embedding step's GPU, e.g.
                         type:nvidia-l4;count:1;machine_type:g2-standard-4;install-nvidia-driver
                         (right fitting puts that step alone on GPU workers)
  MACHINE_TYPE           the CPU workers' machine type (default: Dataflow's)
  MAX_WORKERS            autoscaling limit
  JOB_NAME               default: winnow-YYYYMMDD-HHMMSS (UTC)
  IMAGE, REPOSITORY, TAG the image, as in build.sh
  TEMPLATE_PATH, BUCKET  the template spec, as in build.sh
  TEMP_LOCATION          gs:// temp folder (default: BUCKET/tmp; --direct needs one)
  WINNOW                 the winnow command for --direct (default: winnow)
  DRY_RUN=1 or --print   print the command instead of running it
USAGE
}

direct=0
option() {
  [[ $1 == --direct ]] && direct=1
}
parse_args "$@"
extra=("${ARGS[@]}")

require PROJECT REGION INPUT OUTPUT
image=$(image_name)
job_name=${JOB_NAME:-winnow-$(date -u +%Y%m%d-%H%M%S)}
temp_location=${TEMP_LOCATION:-}
if [[ -z $temp_location && -n ${BUCKET:-} ]]; then
  temp_location="${BUCKET%/}/tmp"
fi

if [[ $direct == 1 ]]; then
  [[ -n $temp_location ]] || die "--direct needs TEMP_LOCATION (or BUCKET)"
  command=("${WINNOW:-winnow}" run)
  IFS='|' read -r -a inputs <<<"$INPUT"
  for list in "${inputs[@]}"; do
    command+=(--input "$list")
  done
  command+=(--output "$OUTPUT")
  if [[ -n ${CONFIG:-} ]]; then
    config=$CONFIG
    if [[ $config == deploy/configs/* ]]; then
      config="${ROOT}/${config}" # the repository's copy
    fi
    command+=(--config "$config")
  fi
  if [[ -n ${ACCELERATOR:-} ]]; then
    command+=(--set "embed.accelerator=${ACCELERATOR}")
  fi
  command+=(--runner DataflowRunner "--project=${PROJECT}" "--region=${REGION}"
    "--temp_location=${temp_location}" "--sdk_container_image=${image}"
    --experiments=use_runner_v2 "--job_name=${job_name}")
  if [[ -n ${MACHINE_TYPE:-} ]]; then
    command+=("--machine_type=${MACHINE_TYPE}")
  fi
  if [[ -n ${MAX_WORKERS:-} ]]; then
    command+=("--max_num_workers=${MAX_WORKERS}")
  fi
  run_command "${command[@]}" "${extra[@]}"
  exit 0
fi

# One --parameters flag each; a value with a comma gets gcloud's alternative delimiter.
parameter() {
  if [[ $2 == *,* ]]; then
    parameters+=("--parameters=^~^$1=$2")
  else
    parameters+=("--parameters=$1=$2")
  fi
}
parameters=()
parameter input "$INPUT"
parameter output "$OUTPUT"
if [[ -n ${CONFIG:-} ]]; then
  config=$CONFIG
  if [[ $config == deploy/configs/* ]]; then
    config="/opt/winnow/${config}" # the copy in the image
  fi
  parameter config "$config"
fi
if [[ -n ${ACCELERATOR:-} ]]; then
  parameter embed_accelerator "$ACCELERATOR"
fi
parameter sdk_container_image "$image"

command=(gcloud dataflow flex-template run "$job_name" "--project=${PROJECT}" "--region=${REGION}"
  "--template-file-gcs-location=$(template_path)" "${parameters[@]}"
  --additional-experiments=use_runner_v2)
if [[ -n $temp_location ]]; then
  command+=("--temp-location=${temp_location}")
fi
if [[ -n ${MACHINE_TYPE:-} ]]; then
  command+=("--worker-machine-type=${MACHINE_TYPE}")
fi
if [[ -n ${MAX_WORKERS:-} ]]; then
  command+=("--max-workers=${MAX_WORKERS}")
fi
run_command "${command[@]}" "${extra[@]}"
