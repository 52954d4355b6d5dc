#!/usr/bin/env bash
# Runs `winnow run` on Apache Flink through Beam's portable runner (see deploy/flink/README.md).
exec "$BASH" "$(dirname "${BASH_SOURCE[0]}")/../portable.sh" flink "$@"
