#!/usr/bin/env bash
# Fills bench/gpu/wheels/ (gitignored) with the linux x86_64 cp311 wheels of the packages a GPU machine
# lacks, at the versions the trainer lock pins (moto and its server deps: requirements-dev.txt), and
# prints their total against the 64 MiB that may travel with the working tree. Run it where PyPI is
# reachable; name the packages the GPU machine is missing (`bench/gpu/run.sh` lists them):
#   bench/gpu/prepare.sh diffusers transformers tokenizers moto ...
# With no names it takes the pure-Python set a CUDA+torch machine usually lacks. bitsandbytes (~70 MB)
# and opencv-python-headless (~50 MB) do not fit with the rest: the bench falls back to AdamW without
# bitsandbytes; kohya cannot start without cv2, so that machine must have it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  names=(diffusers transformers tokenizers accelerate safetensors huggingface-hub peft boto3 botocore s3transfer jmespath
         moto werkzeug xmltodict responses jsonschema jsonschema-specifications referencing rpds-py
         einops toml voluptuous imagesize rich ftfy)
fi
pins=()
for n in "${names[@]}"; do
  pin="$(grep -hiE "^${n}(\[[^]]*\])?==" "$root/containers/trainer/requirements.txt" "$root/requirements-dev.txt" | head -1 | cut -d' ' -f1 | sed 's/\[[^]]*\]//' || true)"
  if [[ -z "$pin" ]]; then echo "prepare: $n is pinned by no lock here: taking PyPI's newest" >&2; pin="$n"; fi
  pins+=("$pin")
done
mkdir -p "$here/wheels"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$here/wheels" "${pins[@]}"
total=$(du -cb "$here"/wheels/*.whl | tail -1 | cut -f1)
echo "prepare: $(ls "$here"/wheels/*.whl | wc -l) wheels, $((total / 1048576)) MiB (the budget is 64 MiB with sd-scripts' source, ~3 MiB without .git)"
