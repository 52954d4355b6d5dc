#!/usr/bin/env bash
# Runs `winnow run` through Beam's portable runner on ENGINE (spark or flink): the implementation
# of deploy/spark/submit.sh and deploy/flink/submit.sh, which call it as
#   deploy/portable.sh ENGINE [--print] --input URLS --output OUT [winnow run and Beam arguments]
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

engine=${1:-}
shift || true
# What differs between the engines: the runner with which Beam starts a job server here, and the
# settings that name the cluster (the first) and that job server, as VARIABLE=--beam_option pairs
# (each option given when its variable is set).
case $engine in
  spark)
    title=Spark
    runner_name=SparkRunner
    flags=(SPARK_MASTER_URL=--spark_master_url SPARK_JOB_SERVER_JAR=--spark_job_server_jar)
    no_master="SPARK_MASTER_URL (e.g. spark://host:7077)"
    master_help="  SPARK_MASTER_URL=spark://host:7077
                              --runner SparkRunner: Beam starts its Spark job server on this
                              machine (Java 11+), fetching the jar from Maven Central unless
                              SPARK_JOB_SERVER_JAR gives its path or URL
                              (beam-runners-spark-3-job-server-2.77.0.jar)"
    ;;
  flink)
    title=Flink
    runner_name=FlinkRunner
    flags=(FLINK_MASTER=--flink_master FLINK_VERSION=--flink_version FLINK_JOB_SERVER_JAR=--flink_job_server_jar)
    no_master="FLINK_MASTER (the JobManager, e.g. host:8081)"
    master_help="  FLINK_MASTER=host:8081      --runner FlinkRunner: Beam starts its Flink job server on this
                              machine (Java 11+) for the JobManager's REST address, fetching the
                              jar from Maven Central unless FLINK_JOB_SERVER_JAR gives its path or
                              URL (beam-runners-flink-FLINK_VERSION-job-server-2.77.0.jar);
                              FLINK_VERSION is the cluster's minor version: 1.19, 1.20, 2.0, 2.1
                              or 2.2 (Beam's default: 2.2)"
    ;;
  *)
    echo "portable.sh: ENGINE must be spark or flink, not '${engine}'" >&2
    echo "usage: deploy/portable.sh ENGINE [--print] --input URLS --output OUT [winnow run and Beam arguments]" >&2
    exit 2
    ;;
esac
PROG=deploy/${engine}/submit.sh
PROG_NAME=submit.sh

usage() {
  cat <<EOF
usage: ${PROG} [--print] --input URLS --output OUT [winnow run and Beam arguments]

Runs \`winnow run\` on ${title} through Beam's portable runner; every argument but --print goes to
\`winnow run\` (--config, --set KEY=VALUE, --stages, Beam's --name=value options).

Where the job goes (one of):
  JOB_ENDPOINT=host:8099      a running Beam job server: --runner PortableRunner --job_endpoint
${master_help}

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

parse_args "$@"
((${#ARGS[@]})) || die "give at least --input and --output"

master=${flags[0]%%=*}
if [[ -n ${JOB_ENDPOINT:-} ]]; then
  runner=(--runner PortableRunner "--job_endpoint=${JOB_ENDPOINT}")
elif [[ -n ${!master:-} ]]; then
  runner=(--runner "$runner_name")
  for flag in "${flags[@]}"; do
    variable=${flag%%=*}
    if [[ -n ${!variable:-} ]]; then
      runner+=("${flag#*=}=${!variable}")
    fi
  done
else
  die "set JOB_ENDPOINT (a running Beam job server) or ${no_master}"
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
      tag=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" 2>/dev/null || true)}
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
exec_command "${WINNOW:-winnow}" run "${runner[@]}" "${environment[@]}" "${ARGS[@]}"
