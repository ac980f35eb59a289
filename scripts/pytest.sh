#!/usr/bin/env bash
# Runs the GPU containers' tests (CPU only, tiny models, local S3) in the shared venv.
# Extra arguments go to pytest. "No tests collected" (pytest exit 5) is a failure here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/python-env.sh"
rc=0
.venv/bin/python -m pytest containers/captioner/tests containers/trainer/tests -q "$@" || rc=$?
if [[ $rc -eq 5 ]]; then echo "pytest.sh: no tests collected" >&2; exit 1; fi
exit $rc
