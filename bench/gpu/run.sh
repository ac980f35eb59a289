#!/usr/bin/env bash
# bench/gpu: the train and evaluate stages on a GPU machine with no internet (see bench/gpu/README.md).
#   bench/gpu/run.sh --sd-scripts /path/to/sd-scripts     # GPU: 512/768 x batch 1/2, 200 steps, 26 renders
#   bench/gpu/run.sh --cpu --steps 2                      # CI: tiny model, kohya stand-in
# Wheels of packages the machine lacks go in bench/gpu/wheels/ (bench/gpu/prepare.sh fills it); they
# are installed offline first. Python: $PYTHON, else the project's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
if compgen -G "$here/wheels/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps "$here"/wheels/*.whl
fi
# Every import the stages need, checked in one go so a missing one costs seconds, not a run.
"$py" - <<'PY'
import importlib.util, sys
need = ["torch", "diffusers", "transformers", "accelerate", "safetensors", "boto3", "moto", "jsonschema", "PIL", "numpy", "peft"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench: missing Python packages: {' '.join(missing)}; put their wheels in bench/gpu/wheels (bench/gpu/prepare.sh)")
PY
exec "$py" "$here/bench.py" "$@"
