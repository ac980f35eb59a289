#!/usr/bin/env bash
# Makes this checkout ready to run: Node packages (npm ci when the lockfile changed) and the Python
# environment (the local AWS endpoint, cfn-lint, the containers' test dependencies). Idempotent and
# quick when nothing changed; `npm run local` and `npm test` call it first, so a fresh clone needs
# nothing else.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

stamp=node_modules/.avatar-lock-sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing Node packages (npm ci)" >&2
  # onnxruntime-node's postinstall would fetch optional CUDA libraries from nuget.org; the CPU
  # runtime the face detector uses ships inside the npm package.
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
bash scripts/python-env.sh
