#!/usr/bin/env bash
# Runs `winnow run` on Apache Flink through Beam's portable runner (see deploy/flink/README.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/flink/submit.sh [--print] --input URLS --output OUT [winnow run and Beam arguments]

Runs `winnow run` on Flink through Beam's portable runner; every argument but --print goes to
`winnow run` (--config, --set KEY=VALUE, --stages, Beam's --name=value options).

Where the job goes (one of):
  JOB_ENDPOINT=host:8099      a running Beam job server: --runner PortableRunner --job_endpoint
  FLINK_MASTER=host:8081      --runner FlinkRunner: Beam starts its Flink job server on this
                              machine (Java 11+) for the JobManager's REST address, fetching the
                              jar from Maven Central unless FLINK_JOB_SERVER_JAR gives its path or
                              URL (beam-runners-flink-FLINK_VERSION-job-server-2.77.0.jar);
                              FLINK_VERSION is the cluster's minor version: 1.19, 1.20, 2.0, 2.1
                              or 2.2 (Beam's default: 2.2)

How the workers run Winnow's Python code:
  ENVIRONMENT_TYPE=PROCESS    (default) Beam's boot binary on every worker, started as BOOT
                              (default /opt/apache/beam/boot), Winnow installed in its Python;
                              WORKER_VENV=/opt/winnow/venv puts that virtualenv first on its PATH
  ENVIRONMENT_TYPE=DOCKER     every worker runs IMAGE (default: the deploy/dataflow image, when
                              PROJECT and REGION name it as deploy/dataflow/build.sh does)
  ENVIRONMENT_TYPE=LOOPBACK   this process runs the code (local tests only)

Other:
  WINNOW=PATH                 the winnow command (default: winnow)
  DRY_RUN=1 or --print        print the command instead of running it
EOF
}

die() {
  echo "submit.sh: $*" >&2
  echo "run deploy/flink/submit.sh --help for usage" >&2
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

dry_run=${DRY_RUN:-0}
args=()
while (($#)); do
  case $1 in
    --print) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      args+=("$@")
      break
      ;;
    *) args+=("$1") ;;
  esac
  shift
done
((${#args[@]})) || die "give at least --input and --output"

if [[ -n ${JOB_ENDPOINT:-} ]]; then
  runner=(--runner PortableRunner "--job_endpoint=${JOB_ENDPOINT}")
elif [[ -n ${FLINK_MASTER:-} ]]; then
  runner=(--runner FlinkRunner "--flink_master=${FLINK_MASTER}")
  if [[ -n ${FLINK_VERSION:-} ]]; then
    runner+=("--flink_version=${FLINK_VERSION}")
  fi
  if [[ -n ${FLINK_JOB_SERVER_JAR:-} ]]; then
    runner+=("--flink_job_server_jar=${FLINK_JOB_SERVER_JAR}")
  fi
else
  die "set JOB_ENDPOINT (a running Beam job server) or FLINK_MASTER (the JobManager, e.g. host:8081)"
fi

environment_type=${ENVIRONMENT_TYPE:-PROCESS}
case ${environment_type^^} in
  PROCESS)
    config="{\"command\": \"${BOOT:-/opt/apache/beam/boot}\""
    if [[ -n ${WORKER_VENV:-} ]]; then
      config+=", \"env\": {\"PATH\": \"${WORKER_VENV}/bin:/usr/local/bin:/usr/bin:/bin\"}"
    fi
    environment=(--environment_type=PROCESS "--environment_config=${config}}")
    ;;
  DOCKER)
    image=${IMAGE:-}
    if [[ -z $image && -n ${PROJECT:-} && -n ${REGION:-} ]]; then
      root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
      tag=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" 2>/dev/null || true)}
      [[ -n $tag ]] || die "set TAG (or IMAGE): no pyproject.toml version to tag the image with"
      image="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY:-winnow}/winnow:${tag}"
    fi
    [[ -n $image ]] || die "ENVIRONMENT_TYPE=DOCKER needs IMAGE (or PROJECT and REGION of deploy/dataflow/build.sh)"
    environment=(--environment_type=DOCKER "--environment_config=${image}")
    ;;
  LOOPBACK) environment=(--environment_type=LOOPBACK) ;;
  *) die "ENVIRONMENT_TYPE must be PROCESS, DOCKER or LOOPBACK, not '${environment_type}'" ;;
esac

# The runner and environment first: an option repeated among the arguments overrides them.
command=("${WINNOW:-winnow}" run "${runner[@]}" "${environment[@]}" "${args[@]}")
if [[ $dry_run == 1 ]]; then
  print_command "${command[@]}"
else
  exec "${command[@]}"
fi
