#!/usr/bin/env bash
# Runs the CPU test targets with Bazel, offline. Needs Debian's Bazel (apt-get install
# bazel-bootstrap) and the project's packages in the python3 on PATH (pip install -e ".[test]").
# Extra arguments go to `bazel test`, e.g. --test_tag_filters=cpu,-slow.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bazel test --test_tag_filters=cpu "$@" //...
