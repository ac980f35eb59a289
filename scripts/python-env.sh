#!/usr/bin/env bash
# Builds (or reuses) the Python environment for the GPU containers' tests and the Python dev tools
# (moto_server, cfn-lint, pytest), then points ./.venv at it.
#
# The venv lives outside the checkout, keyed by a hash of the two image locks and
# requirements-dev.txt, so a machine that built it once reuses it in seconds and a lock change
# builds a fresh one beside it. The container packages are not installed: their tests put
# containers/common/src and containers/<name>/src on the path (containers/conftest.py), so one venv
# serves every checkout.
#
# Env: AVATAR_CACHE (default ~/.cache/avatar-lora), PYTHON (default python3.11).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AVATAR_CACHE:-$HOME/.cache/avatar-lora}"
python="${PYTHON:-python3.11}"
uv_version="0.13.9"
locks=(containers/trainer/requirements.txt containers/captioner/requirements.txt requirements-dev.txt)

fail() { echo "python-env: $*" >&2; exit 1; }
trap 'fail "failed at line $LINENO (see the output above)"' ERR

cd "$root"
for f in "${locks[@]}"; do [[ -f "$f" ]] || fail "missing $f"; done
command -v "$python" >/dev/null || fail "$python not found; install Python 3.11 or set PYTHON"

hash="$( (cat "${locks[@]}"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
venv="$cache/venv-$hash"
mkdir -p "$cache"

link_venv() {
  # A real directory here is a stray hand-made venv: this script owns .venv.
  if [[ -e .venv && ! -L .venv ]]; then rm -rf .venv; fi
  ln -sfn "$venv" .venv.tmp-$$ && mv -T .venv.tmp-$$ .venv
}

if [[ -f "$venv/.complete" ]]; then
  [[ "$(readlink .venv 2>/dev/null || true)" == "$venv" ]] || link_venv
  exit 0
fi

# One builder at a time per cache (parallel CI jobs, several checkouts on one machine).
exec 9>"$cache/.lock"
flock 9
if [[ ! -f "$venv/.complete" ]]; then
  start=$SECONDS
  uv="$(command -v uv || true)"
  if [[ -z "$uv" || "$("$uv" --version | cut -d' ' -f2)" != "$uv_version" ]]; then
    if [[ ! -x "$cache/uv-$uv_version/bin/uv" ]]; then
      echo "python-env: installing uv $uv_version" >&2
      "$python" -m venv "$cache/uv-$uv_version"
      "$cache/uv-$uv_version/bin/pip" install -q "uv==$uv_version"
    fi
    uv="$cache/uv-$uv_version/bin/uv"
  fi
  echo "python-env: building $venv (torch with CUDA wheels: several GB on first download)" >&2
  rm -rf "$venv"
  "$uv" venv -q --python "$python" "$venv"
  # Both locks carry hashes; the dev tools are pinned by version only.
  reqs=(); for f in "${locks[@]}"; do reqs+=(-r "$f"); done
  "$uv" pip install -q --python "$venv/bin/python" "${reqs[@]}"
  for tool in moto_server cfn-lint pytest; do
    [[ -x "$venv/bin/$tool" ]] || fail "$tool missing from $venv after install"
  done
  touch "$venv/.complete"
  echo "python-env: built in $((SECONDS - start)) s" >&2
fi
flock -u 9
link_venv
