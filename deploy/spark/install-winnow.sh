#!/usr/bin/env bash
# Installs Winnow and Beam's Python SDK harness boot on one cluster node, so that Spark executors
# and Flink TaskManagers can run Winnow with ENVIRONMENT_TYPE=PROCESS: a Dataproc initialization
# action or an EMR bootstrap action (deploy/spark/README.md, deploy/flink/README.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install-winnow.sh [--print] SOURCE_URI BOOT_URI

  SOURCE_URI  Winnow's source archive (gs://, s3:// or a local path), made from a checkout with
              git archive --format=tar.gz -o winnow.tar.gz HEAD
  BOOT_URI    the boot binary of Beam 2.77.0's Python SDK image (gs://, s3:// or local), copied
              out once with: docker create --name boot apache/beam_python3.11_sdk:2.77.0 &&
              docker cp boot:/opt/apache/beam/boot ./boot && docker rm boot

On Dataproc, whose initialization actions take no arguments, they come from the cluster metadata
keys winnow-source and beam-boot. Installs a Python 3.11 virtualenv with Winnow in PREFIX/venv
(default /opt/winnow/venv) and the boot binary as BOOT (default /opt/apache/beam/boot).
PYTHON (default python3.11) and its venv module are installed with dnf or apt-get when missing. DRY_RUN=1 or --print
prints the commands instead of running them.
EOF
}

# Dataproc and EMR fetch this file alone and run it on every node, so it sources nothing: these
# helpers are its own copies of deploy/lib.sh's.
die() {
  echo "install-winnow.sh: $*" >&2
  exit 2
}

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
run_command() {
  if [[ $dry_run == 1 ]]; then
    print_command "$@"
  else
    "$@"
  fi
}

# Copies a gs://, s3:// or local file.
fetch() {
  case $1 in
    gs://*) run_command gcloud storage cp "$1" "$2" ;;
    s3://*) run_command aws s3 cp "$1" "$2" ;;
    *) run_command cp "$1" "$2" ;;
  esac
}

positional=()
for arg in "$@"; do
  case $arg in
    --print) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) positional+=("$arg") ;;
  esac
done
if ((${#positional[@]} == 0)) && [[ -x /usr/share/google/get_metadata_value ]]; then
  positional=("$(/usr/share/google/get_metadata_value attributes/winnow-source)"
    "$(/usr/share/google/get_metadata_value attributes/beam-boot)")
fi
((${#positional[@]} == 2)) || die "give SOURCE_URI and BOOT_URI (--help for usage)"
source_uri=${positional[0]}
boot_uri=${positional[1]}

prefix=${PREFIX:-/opt/winnow}
boot=${BOOT:-/opt/apache/beam/boot}
python=${PYTHON:-python3.11}
sudo=()
if ((EUID != 0)); then
  sudo=(sudo) # EMR runs bootstrap actions as hadoop
fi

# A Python 3.11 with venv (Debian splits it into python3.11-venv).
if [[ $dry_run != 1 ]] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  if command -v dnf >/dev/null; then
    "${sudo[@]}" dnf install -y -q python3.11 python3.11-pip python3.11-devel
  else
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv
  fi
fi

run_command "${sudo[@]}" mkdir -p "$prefix/src" "$(dirname "$boot")"
fetch "$source_uri" /tmp/winnow-source.tar.gz
run_command "${sudo[@]}" tar -xzf /tmp/winnow-source.tar.gz -C "$prefix/src"
run_command "${sudo[@]}" "$python" -m venv "$prefix/venv"
run_command "${sudo[@]}" "$prefix/venv/bin/pip" install --no-cache-dir "$prefix/src"
# The shipped model is looked up beside the installed `transforms` package (as in the Dockerfile);
# -I keeps the current directory off sys.path.
run_command "${sudo[@]}" "$prefix/venv/bin/python" -I -c \
  "import pathlib, shutil, transforms; shutil.copytree('$prefix/src/models', pathlib.Path(transforms.__file__).resolve().parent.parent / 'models', dirs_exist_ok=True)"
fetch "$boot_uri" /tmp/beam-boot
run_command "${sudo[@]}" install -m 0755 /tmp/beam-boot "$boot"
