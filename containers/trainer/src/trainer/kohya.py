"""kohya sd-scripts' interface (docs/kohya.md): the dataset and config TOML, and the launch command.

Config keys are argparse dest names; kohya does not convert TOML values, so `resolution` is the
string "512,512" and list flags are TOML arrays.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shlex
from pathlib import Path, PurePosixPath

import toml

from avatar_job import StageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}  # what kohya globs; others are skipped silently
NETWORK_MODULES = {"lora": "networks.lora", "locon": "lycoris.kohya", "loha": "lycoris.kohya"}


def to_toml(doc: dict) -> str:
    """`doc` as TOML, written by the `toml` package kohya reads its config and dataset files with, so
    what kohya reads back is what we wrote. NaN and infinity are refused: kohya would take them as values."""

    def check(v, where: str) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where} = {v} has no TOML form kohya accepts")
        for k, x in v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ():
            check(x, f"{where}.{k}" if where else str(k))

    check(doc, "")
    return toml.dumps(doc)


def check_plan(plan: dict) -> None:
    """Rejects what would make kohya fail late or, worse, exit 0 having trained nothing."""
    p, spec, images = plan["plan"], plan["spec"], plan["images"]
    bad = lambda field, msg: StageError("PLAN_IMPOSSIBLE", msg + "; rerun normalize to rebuild plan.json", field)
    if p["folder"] != f"{p['repeats']}_{spec['token']}":
        raise bad(
            "plan.folder",
            f"folder {p['folder']!r} must be '<repeats>_<token>' = '{p['repeats']}_{spec['token']}' (kohya reads repeats from it)",
        )
    if p["numImages"] != len(images):
        raise bad("plan.numImages", f"numImages is {p['numImages']} but {len(images)} images are listed")
    # The steps formula (docs/training.md); kohya's own count (per-bucket batches) can be slightly higher at batch 2,
    # so progress uses the total kohya prints.
    steps = math.ceil(p["numImages"] * p["repeats"] * p["epochs"] / p["batchSize"])
    if p["totalSteps"] != steps:
        raise bad(
            "plan.totalSteps",
            f"totalSteps is {p['totalSteps']} but {p['numImages']} images x {p['repeats']} repeats x {p['epochs']} epochs / batch {p['batchSize']} = {steps}",
        )
    if p["batchSize"] != spec["training"]["batchSize"]:
        raise bad("plan.batchSize", f"plan batch {p['batchSize']} differs from training.batchSize {spec['training']['batchSize']}")
    stems: dict[str, str] = {}
    for name in images:
        path = PurePosixPath(name)
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name != name:
            raise bad(name, f"{name!r} is not a plain {'/'.join(sorted(IMAGE_EXTENSIONS))} file name, which kohya would skip")
        if path.stem in stems:
            raise bad(name, f"{name!r} and {stems[path.stem]!r} share the caption file {path.stem}.txt")
        stems[path.stem] = name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", plan["outputName"]):
        raise bad("outputName", f"outputName {plan['outputName']!r} is not a safe file name")


def needs_gradient_checkpointing(resolution: int, batch: int, dim: int, gpu_gib: float | None) -> bool:
    """Trades ~20-30% speed for memory only when the run would not fit otherwise.

    Rough peak for SD1.5 LoRA with sdpa, cached latents and 8-bit Adam: 7 GiB at 512px batch 1 dim
    128, growing with pixels x batch (bench/gpu prints the measured peak to recalibrate this); unknown
    GPU memory (CPU test runs) means no checkpointing. An A10G (24 GB) runs even 768px batch 2 without it.
    """
    if gpu_gib is None:
        return False
    need = 5.0 + 2.0 * (resolution / 512) ** 2 * batch + dim / 128
    return need > 0.9 * gpu_gib


def attention(environ: dict | None = None) -> str:
    """xformers when the image has it (AVATAR_ATTENTION overrides: xformers, sdpa or none), else sdpa.

    Both are memory-efficient attention kernels that give the same results up to float rounding;
    plain attention would need gradient checkpointing far sooner.
    """
    env = os.environ if environ is None else environ
    if choice := env.get("AVATAR_ATTENTION"):
        if choice not in ("xformers", "sdpa", "none"):
            raise StageError("BAD_ENV", f"AVATAR_ATTENTION is {choice!r}; use xformers, sdpa or none", "AVATAR_ATTENTION")
        return choice
    return "xformers" if importlib.util.find_spec("xformers") is not None else "sdpa"


SHM_PER_WORKER = 128 * 2**20  # what a worker's prefetched batches can need in /dev/shm without cached latents


def data_loader_workers(cpus: int, shm_bytes: int | None, cache_latents: bool) -> int:
    """Data loader workers: one per vCPU left after the training process, at most 8 (kohya's cap).

    Workers hand batches over through /dev/shm; Docker's default is 64 MiB, so the job definition
    sets sharedMemorySize. With cached latents a batch is a few hundred KB; without them, decoded
    images need ~SHM_PER_WORKER each, so a small /dev/shm gets fewer workers (0 = load in the
    training process) instead of a "bus error" mid-run.
    """
    workers = max(0, min(8, cpus - 1))
    if not cache_latents and shm_bytes is not None:
        workers = min(workers, shm_bytes // SHM_PER_WORKER)
    return workers


def available_cpus() -> int:
    """vCPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota if one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def shm_bytes(path: str = "/dev/shm") -> int | None:
    try:
        st = os.statvfs(path)
        return st.f_frsize * st.f_blocks
    except OSError:
        return None


def dataset_config(plan: dict, dataset_dir: Path) -> dict:
    p, t, spec = plan["plan"], plan["spec"]["training"], plan["spec"]
    return {
        "general": {"shuffle_caption": False, "caption_extension": ".txt", "keep_tokens": 0},
        "datasets": [
            {
                "resolution": p["resolution"],
                "batch_size": p["batchSize"],
                "enable_bucket": True,
                "min_bucket_reso": 256,
                "max_bucket_reso": 1024,
                "bucket_reso_steps": 64,
                "bucket_no_upscale": True,
                "subsets": [
                    {
                        "image_dir": str(dataset_dir / p["folder"]),
                        "num_repeats": p["repeats"],
                        # Used only for an image without a caption file (the captioner writes one for each).
                        "class_tokens": f"{spec['token']} {spec['classWord']}",
                        "caption_extension": ".txt",
                        "color_aug": t["colorAug"],
                        "flip_aug": t["flipAug"],
                    }
                ],
            }
        ],
    }


def training_config(
    plan: dict,
    *,
    base_model: Path,
    dataset_toml_path: Path,
    output_dir: Path,
    tokenizer_dir: Path,
    attention: str = "sdpa",
    gpu_gib: float | None = None,
    workers: int = 2,
) -> dict:
    """The train_network.py arguments, by argparse dest name.

    Speed settings that leave recipe.md's results alone (same steps, rates, dim/alpha, precision):
    memory-efficient attention, latents encoded once (to disk, beside the images) instead of
    every step, persistent data loader workers, and no gradient checkpointing where memory allows.
    """
    p, t = plan["plan"], plan["spec"]["training"]
    network = t["network"]
    cfg: dict = {
        "pretrained_model_name_or_path": str(base_model),
        "tokenizer_cache_dir": str(tokenizer_dir),
        "dataset_config": str(dataset_toml_path),
        "resolution": f"{p['resolution']},{p['resolution']}",
        "output_dir": str(output_dir),
        "output_name": plan["outputName"],
        "save_model_as": "safetensors",
        "save_precision": "fp16",  # what AUTOMATIC1111 and diffusers load everywhere
        "save_every_n_epochs": 1,
        "save_state": True,
        "max_train_epochs": p["epochs"],
        "train_batch_size": p["batchSize"],
        "optimizer_type": t["optimizer"],
        "learning_rate": t["unetLr"],
        "unet_lr": t["unetLr"],
        "text_encoder_lr": t["textEncoderLr"],
        "lr_scheduler": t["lrScheduler"],
        "lr_warmup_steps": t["lrWarmupSteps"],
        "network_module": NETWORK_MODULES[network],
        "network_dim": t["networkDim"],
        "network_alpha": float(t["networkAlpha"]),
        "mixed_precision": t["mixedPrecision"],
        "caption_extension": ".txt",
        # kohya cannot cache with color_aug or random_crop: the contract rejects cacheLatents with
        # colorAug and offers no random crop, so the recipe caches.
        "cache_latents": t["cacheLatents"],
        "cache_latents_to_disk": t["cacheLatents"],
        "vae_batch_size": 4,  # encodes the latents 4 at a time: the same latents, sooner
        "seed": t["seed"],
        "max_data_loader_n_workers": workers,
        "persistent_data_loader_workers": workers > 0,
    }
    if t["optimizerArgs"]:
        cfg["optimizer_args"] = list(t["optimizerArgs"])
    if network != "lora":
        # LyCORIS takes its algorithm and conv rank through network_args.
        cfg["network_args"] = [f"algo={network}", f"conv_dim={t['networkDim']}", f"conv_alpha={t['networkAlpha']:g}"]
    if attention == "xformers":
        cfg["xformers"] = True
    elif attention == "sdpa":
        cfg["sdpa"] = True
    if needs_gradient_checkpointing(p["resolution"], p["batchSize"], t["networkDim"], gpu_gib):
        cfg["gradient_checkpointing"] = True
    return cfg


def launch_command(config_toml: Path, resume: Path | None, resume_epoch: int = 0) -> tuple[list[str], Path | None]:
    """`accelerate launch ... train_network.py --config_file X [--resume DIR --initial_epoch k+1]`, and its working dir.

    --initial_epoch because kohya (48d368fa) restarts its step counter at 0 on --resume, so a state
    saved by a resumed run records a step count of that run only ("save train state ... at epoch 2
    step 2" in tests/fixtures/kohya-resume-transcript.err.txt), and a second resume would compute
    the wrong epoch from it. Our state folder names carry the epoch, and --initial_epoch wins.

    AVATAR_KOHYA_CMD replaces everything before the arguments (tests run a stand-in process).
    """
    override = os.environ.get("AVATAR_KOHYA_CMD")
    if override:
        cmd, cwd = shlex.split(override), None
    else:
        sd = Path(os.environ.get("AVATAR_SD_SCRIPTS_DIR") or "/opt/sd-scripts")
        if not (sd / "train_network.py").is_file():
            raise StageError(
                "KOHYA_MISSING",
                f"no train_network.py in {sd}; the trainer image must clone sd-scripts there (AVATAR_SD_SCRIPTS_DIR)",
                str(sd),
            )
        cmd = ["accelerate", "launch", "--num_cpu_threads_per_process", "1", str(sd / "train_network.py")]
        cwd = sd
    args = ["--config_file", str(config_toml)]
    if resume:
        args += ["--resume", str(resume), "--initial_epoch", str(resume_epoch + 1)]
    return cmd + args, cwd
