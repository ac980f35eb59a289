#!/usr/bin/env bash
# Recompiles the image locks from containers/<name>/requirements.in (exact versions + hashes,
# linux x86_64, Python 3.11). The trainer lock is the superset and is resolved together with the
# dev tools; the captioner lock is constrained to it, so CI installs both into one venv.
set -euo pipefail
cd "$(dirname "$0")/.."
compile() { uv pip compile -q --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 "$@"; }
compile -c requirements-dev.txt containers/trainer/requirements.in -o containers/trainer/requirements.txt
compile -c containers/trainer/requirements.txt containers/captioner/requirements.in -o containers/captioner/requirements.txt
