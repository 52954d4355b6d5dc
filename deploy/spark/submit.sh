#!/usr/bin/env bash
# Runs `winnow run` on Apache Spark through Beam's portable runner (see deploy/spark/README.md).
exec "$BASH" "$(dirname "${BASH_SOURCE[0]}")/../portable.sh" spark "$@"
