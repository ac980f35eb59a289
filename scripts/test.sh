#!/usr/bin/env bash
# The test command (`npm test`): type-check, the linters (Biome, ruff; zero findings), the TypeScript suites (contract, infra with cdk-nag,
# cfn-lint and asl-validator, handlers and the state machine against the local endpoint), the CDK
# CLI synth with real bundling and the size and platform checks of its Lambda bundles, then the
# containers' pytest suites. Every part runs; any failure fails.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh || exit 1
export AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED=true

failed=()
step() {
  local name="$1"; shift
  echo "=== $name" >&2
  "$@" || failed+=("$name")
}
step "typecheck" npx tsc --noEmit -p tsconfig.json
step "lint" bash scripts/lint.sh
step "vitest" npx vitest run
step "cdk synth" bash -c 'out=$(mktemp -d) && trap "rm -rf $out" EXIT && CDK_DISABLE_CLI_TELEMETRY=true CDK_DISABLE_VERSION_CHECK=1 npx cdk synth -q --no-notices --no-version-reporting -o "$out" >/dev/null && test -s "$out/AvatarStack.template.json" && echo "cdk synth: AvatarStack.template.json written" && npx tsx scripts/check-bundles.ts "$out"'
step "pytest" bash scripts/pytest.sh

if (( ${#failed[@]} )); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
