#!/usr/bin/env bash
# The linters `npm test` runs, each with zero findings allowed: Biome (lint + format) over the
# TypeScript and JSON, ruff (lint + format) over the Python. `npm run lint -- --fix` applies the
# safe fixes and formats instead of checking.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py=(containers bench scripts)
rc=0
if [[ "${1:-}" == "--fix" ]]; then
  npx biome check --write . || rc=1
  .venv/bin/ruff check --fix "${py[@]}" || rc=1
  .venv/bin/ruff format "${py[@]}" || rc=1
else
  npx biome ci --error-on-warnings . || rc=1
  .venv/bin/ruff check "${py[@]}" || rc=1
  .venv/bin/ruff format --check "${py[@]}" || rc=1
fi
exit $rc
