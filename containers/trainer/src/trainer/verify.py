"""Checks a LoRA checkpoint before it is published: parseable, kohya's key layout, the planned dim/alpha."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import defaultdict
from pathlib import Path

from safetensors import safe_open

from avatar_job import StageError

# Tensor names per network type (kohya networks.lora and LyCORIS write these under each module).
PARTS = {
    "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "locon": {"lora_down.weight", "lora_up.weight", "alpha"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
}
RANK_TENSOR = {"lora": "lora_down.weight", "locon": "lora_down.weight", "loha": "hada_w1_b"}
PREFIXES = ("lora_unet_", "lora_te_")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_header(path: Path) -> dict:
    """The safetensors JSON header, checked against the file size (a torn or corrupt file fails here)."""
    bad = lambda why: StageError(
        "CHECKPOINT_INVALID", f"{path.name} is not a readable safetensors file ({why}); the run must be retried", path.name
    )
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise bad(f"header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info.get("data_offsets", (None, None)) if isinstance(info, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data):
            raise bad(f"tensor {name} points outside the file")
    return header


def verify_checkpoint(path: Path, network: str, dim: int, alpha: float) -> dict:
    """Raises StageError CHECKPOINT_INVALID unless `path` is a LoRA of the planned shape; returns a summary."""
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    invalid = lambda why: StageError(
        "CHECKPOINT_INVALID", f"{path.name}: {why}; this is not the LoRA the plan asked for, so it was not published", path.name
    )
    modules: dict[str, set[str]] = defaultdict(set)
    for name in header:
        if name == "__metadata__":
            continue
        if not name.startswith(PREFIXES):
            raise invalid(f"tensor {name!r} is not under {' or '.join(PREFIXES)}")
        module, _, part = name.partition(".")
        modules[module].add(part)
    if not modules:
        raise invalid("it holds no LoRA modules")
    for module, parts in modules.items():
        if parts != PARTS[network]:
            raise invalid(f"module {module} has {sorted(parts)}, expected {sorted(PARTS[network])}")

    with safe_open(str(path), framework="pt") as f:
        for module in modules:
            rows = f.get_slice(f"{module}.{RANK_TENSOR[network]}").get_shape()[0]
            if rows != dim:
                raise invalid(f"module {module} has dim {rows}, the plan says {dim}")
            value = float(f.get_tensor(f"{module}.alpha").float())
            if not math.isclose(value, alpha, rel_tol=1e-3):
                raise invalid(f"module {module} has alpha {value:g}, the plan says {alpha:g}")
    for key, want in (("ss_network_dim", dim), ("ss_network_alpha", alpha)):
        if key in meta and not math.isclose(float(meta[key]), float(want), rel_tol=1e-3):
            raise invalid(f"metadata {key}={meta[key]}, the plan says {want:g}")
    unet = sum(m.startswith("lora_unet_") for m in modules)
    return {
        "modules": len(modules),
        "unetModules": unet,
        "textEncoderModules": len(modules) - unet,
        "epoch": int(meta["ss_epoch"]) if str(meta.get("ss_epoch", "")).isdigit() else None,
    }
