"""`npm run -s bench:image`: each GPU image layer's size, estimated from the locks.

For every pin in containers/*/requirements.txt it finds the linux x86_64 cp311 wheel whose sha256 the
lock allows (PyPI's JSON simple API, PEP 691/700), and reads its compressed size and, from the zip's
central directory (HTTP range requests, never the whole wheel), its unpacked size. Results are cached
in .cache/bench-image/ (gitignored); --offline reads bench/image-sizes.json instead, a snapshot
measured once (its date is printed), and --update-snapshot rewrites that snapshot.

Sizes of things no lock pins (base images, apt packages, BLIP's weights) are estimates, marked "est."
with their source. Compressed ~ what ECR sends; unpacked ~ what the host extracts (the slow part on few vCPUs).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import urllib.request
import zipfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache/bench-image"
SNAPSHOT = ROOT / "bench/image-sizes.json"
LOCKS = {"trainer": ROOT / "containers/trainer/requirements.txt", "captioner": ROOT / "containers/captioner/requirements.txt"}
MB = 1_000_000

# Not in any lock: estimates with their source (compressed, unpacked), in bytes.
EST = {
    "ubuntu:22.04": (29 * MB, 78 * MB, "Docker Hub's ubuntu:22.04 amd64 image (~29 MB compressed, ~78 MB unpacked)"),
    "python:3.11-slim-bookworm": (45 * MB, 130 * MB, "Docker Hub's python:3.11-slim-bookworm amd64 (~45 MB compressed, ~130 MB unpacked)"),
    "uv-python": (30 * MB, 100 * MB, "uv's python-build-standalone 3.11 install_only (~30 MB archive, ~100 MB unpacked)"),
    "uv": (20 * MB, 45 * MB, "the uv binary copied from ghcr.io/astral-sh/uv (~20 MB compressed)"),
    "apt-git-gl": (
        40 * MB,
        120 * MB,
        "git, libgl1, libglib2.0-0 and their dependencies on Ubuntu 22.04 (apt's download/installed sizes, rounded up)",
    ),
    "apt-min": (1 * MB, 2 * MB, "ca-certificates"),
    "sd-scripts": (3 * MB, 8 * MB, "sd-scripts' source without .git"),
    "configs": (1 * MB, 2 * MB, "the CLIP tokenizer and SD 1.5 configs (json and merges.txt)"),
    "code": (1 * MB, 1 * MB, "our packages"),
    "blip-fp32": (1880 * MB, 1880 * MB, "BLIP large's model.safetensors: ~470M parameters x 4 bytes (weights do not compress)"),
    "blip-fp16": (940 * MB, 940 * MB, "the same weights stored as fp16, which is how the captioner runs them on a GPU"),
    "clip-b32": (605 * MB, 605 * MB, "CLIP ViT-B/32 (evaluate's scorer): ~151M parameters x 4 bytes"),
}
# The CUDA user-space libraries of nvidia/cuda:*-runtime are the same ones the nvidia-* wheels carry:
# their wheel sizes stand in for that base image's CUDA layers.
CUDA_RUNTIME_WHEELS = [
    "nvidia-cublas-cu12",
    "nvidia-cufft-cu12",
    "nvidia-curand-cu12",
    "nvidia-cusolver-cu12",
    "nvidia-cusparse-cu12",
    "nvidia-cuda-nvrtc-cu12",
    "nvidia-cuda-runtime-cu12",
    "nvidia-nvjitlink-cu12",
]
BUILD_TOOLS = {"uv", "apt-git-gl", "setuptools"}


def parse_lock(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, allowed sha256 hashes)."""
    out: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line):
            name = m[1].lower()
            out[name] = (m[2], set())
        if name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            out[name][1].add(h[1])
    return out


def wheel_fits(filename: str) -> bool:
    tags = filename[:-4].split("-")[-3:]
    py, abi, plat = tags
    return (py in ("cp311", "py3", "py2.py3") or "cp311" in py or abi == "abi3") and (
        plat == "any" or ("x86_64" in plat and "manylinux" in plat)
    )


class RangeFile(io.RawIOBase):
    """A read-only file over HTTP range requests: zipfile reads only the end and the central directory."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0

    def seekable(self):
        return True

    def readable(self):
        return True

    def seek(self, offset, whence=0):
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        if self.pos >= self.size or not len(b):
            return 0
        end = min(self.size, self.pos + len(b)) - 1
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def measure(name: str, version: str, hashes: set[str]) -> dict:
    cached = CACHE / f"{name}-{version}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    picks = [f for f in files if f["hashes"].get("sha256") in hashes and f["filename"].endswith(".whl") and wheel_fits(f["filename"])]
    if not picks:
        # Source only (e.g. dadaptation): built into a small wheel at image build; its archive size
        # stands in for both figures.
        sdists = [f for f in files if f["hashes"].get("sha256") in hashes]
        if not sdists:
            raise SystemExit(f"bench:image: no file of {name}=={version} on PyPI matches the lock's hashes")
        f = sdists[0]
        out = {"name": name, "version": version, "wheel": f["filename"], "compressed": f["size"], "unpacked": f["size"], "sdist": True}
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out))
        return out
    f = max(picks, key=lambda f: ("manylinux" in f["filename"], f["size"]))
    # Read the central directory through a buffer large enough that it is one or two requests.
    with zipfile.ZipFile(io.BufferedReader(RangeFile(f["url"], f["size"]), buffer_size=4 * 2**20)) as z:
        unpacked = sum(i.file_size for i in z.infolist())
    out = {"name": name, "version": version, "wheel": f["filename"], "compressed": f["size"], "unpacked": unpacked}
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out))
    return out


def sizes(offline: bool) -> tuple[dict[str, dict], str]:
    locks = {img: parse_lock(p) for img, p in LOCKS.items()}
    if offline:
        snap = json.loads(SNAPSHOT.read_text())
        return snap["wheels"], f"snapshot of {snap['measured']} (bench/image-sizes.json)"
    wanted = {(n, v): h for lock in locks.values() for n, (v, h) in lock.items()}
    try:
        return {
            n: measure(n, v, h) for (n, v), h in sorted(wanted.items())
        }, f"PyPI, {date.today().isoformat()} (cached in .cache/bench-image)"
    except OSError as e:  # no route to PyPI: the snapshot, said so
        print(f"bench:image: PyPI unreachable ({e}); using the snapshot", file=sys.stderr)
        return sizes(offline=True)


def gb(n: float) -> str:
    return f"{n / 1e9:6.2f} GB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="npm run -s bench:image", description=__doc__.split("\n\n")[0])
    ap.add_argument("--offline", action="store_true", help="read bench/image-sizes.json instead of PyPI")
    ap.add_argument("--update-snapshot", action="store_true", help="rewrite bench/image-sizes.json from PyPI")
    args = ap.parse_args(argv)
    wheels, source = sizes(args.offline)
    if args.update_snapshot:
        SNAPSHOT.write_text(json.dumps({"measured": date.today().isoformat(), "wheels": wheels}, indent=1, sort_keys=True) + "\n")
    locks = {img: parse_lock(p) for img, p in LOCKS.items()}

    def pkgs(names) -> tuple[int, int]:
        return sum(wheels[n]["compressed"] for n in names), sum(wheels[n]["unpacked"] for n in names)

    def est(key) -> tuple[int, int]:
        return EST[key][0], EST[key][1]

    nvidia = sorted(n for n in locks["trainer"] if n.startswith("nvidia-"))
    cuda_base = pkgs(CUDA_RUNTIME_WHEELS)
    cuda_base = (cuda_base[0] + EST["ubuntu:22.04"][0], cuda_base[1] + EST["ubuntu:22.04"][1])
    rest_trainer = sorted(n for n in locks["trainer"] if not n.startswith("nvidia-") and n != "torch")
    images = {
        "captioner (before: its own image)": [
            ("FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04 (est.: ubuntu + CUDA libs)", cuda_base, "dup"),
            ("apt ca-certificates (est.)", est("apt-min"), ""),
            ("uv binary (est.)", est("uv"), "build"),
            ("uv python 3.11 (est.)", est("uv-python"), ""),
            ("pip: captioner lock", pkgs(locks["captioner"]), "dup"),
            ("BLIP large fp32 weights (est.)", est("blip-fp32"), ""),
            ("code", est("code"), ""),
        ],
        "trainer (before: its own image)": [
            ("FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04 (est.: ubuntu + CUDA libs)", cuda_base, "dup"),
            ("apt git libgl1 libglib2.0-0 (est.)", est("apt-git-gl"), "build"),
            ("uv binary (est.)", est("uv"), "build"),
            ("uv python 3.11 (est.)", est("uv-python"), ""),
            ("pip: trainer lock", pkgs(locks["trainer"]), "dup"),
            ("sd-scripts source (est.)", est("sd-scripts"), ""),
            ("tokenizer + SD1.5 configs (est.)", est("configs"), ""),
            ("CLIP ViT-B/32 scorer weights (est.)", est("clip-b32"), ""),
            ("code", est("code"), ""),
        ],
        "now: one image (containers/trainer/Dockerfile, multi-stage)": [
            (
                "FROM python:3.11-slim-bookworm (est.; CUDA comes from the wheels, the driver from the host)",
                est("python:3.11-slim-bookworm"),
                "",
            ),
            # Split so no layer passes ~2 GB and Docker pulls and unpacks them in parallel.
            ("COPY venv: nvidia-cudnn + nvidia-cublas", pkgs(["nvidia-cudnn-cu12", "nvidia-cublas-cu12"]), ""),
            (
                "COPY venv: the other nvidia-* CUDA wheels",
                pkgs([n for n in nvidia if n not in ("nvidia-cudnn-cu12", "nvidia-cublas-cu12")]),
                "",
            ),
            ("COPY venv: torch", pkgs(["torch"]), ""),
            ("COPY venv: everything else in the trainer lock (captioner's is a subset)", pkgs(rest_trainer), ""),
            ("BLIP large fp16 weights (est.)", est("blip-fp16"), ""),
            ("CLIP ViT-B/32 scorer weights (est.)", est("clip-b32"), ""),
            (
                "sd-scripts + tokenizer + SD1.5 configs + code (est.)",
                tuple(a + b + c for a, b, c in zip(est("sd-scripts"), est("configs"), est("code"), strict=True)),
                "",
            ),
        ],
    }
    print(f"bench:image: wheel sizes from {source}; compressed = pulled from ECR, unpacked = extracted on the host")
    totals = {}
    for image, layers in images.items():
        print(f"\n{image}")
        c_sum = u_sum = 0
        for label, (c, u), flag in layers:
            mark = {"dup": "  [duplicate: in both images before]", "build": "  [build tool: not needed at run time]"}.get(flag, "")
            big = "  [> 2 GB: one slow layer]" if c > 2e9 else ""
            print(f"  {gb(c)} compressed {gb(u)} unpacked  {label}{mark}{big}")
            c_sum, u_sum = c_sum + c, u_sum + u
        print(f"  {gb(c_sum)} compressed {gb(u_sum)} unpacked  TOTAL")
        totals[image] = (c_sum, u_sum)
    today = [v for k, v in totals.items() if "before" in k]
    proposed = totals[next(k for k in totals if k.startswith("now"))]
    print(
        f"\nbefore, a cold instance that ran caption and then train pulled both images: {gb(sum(c for c, _ in today))} compressed, "
        f"{gb(sum(u for _, u in today))} unpacked; the one image: {gb(proposed[0])} compressed, {gb(proposed[1])} unpacked"
    )
    dup = pkgs(sorted(set(locks["captioner"]) & set(locks["trainer"])))
    print(
        f"installed twice before (both locks): {gb(dup[0])} compressed, of which torch + nvidia-*: {gb(pkgs(['torch', *nvidia])[0])}; "
        f"plus the CUDA runtime base under each pip install: {gb(cuda_base[0])} est."
    )
    top = sorted(locks["trainer"], key=lambda n: -wheels[n]["compressed"])[:8]
    print("largest wheels: " + ", ".join(f"{n} {wheels[n]['compressed'] / 1e6:.0f} MB" for n in top))
    print("estimates: " + "; ".join(f"{k}: {v[2]}" for k, v in EST.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
