#!/usr/bin/env bash
# The GPU check in one command: the CUDA test tier, the throughput tables and the
# domain-adaptation benchmark, inside 9 minutes, into one results file.
# `bash benchmarks/gpu_check.sh --help` says what it needs and does (benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
