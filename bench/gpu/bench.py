"""GPU benchmark of the train and evaluate stages: the real `trainer` code against a local S3 (moto).

Builds a randomly initialised SD 1.5-architecture model here (weight values do not change speed),
runs the train stage (kohya sd-scripts at the pinned commit, or in --cpu mode without a checkout the
kohya stand-in from the tests) for a few hundred steps at each resolution x batch, then the evaluate
stage for a few dozen renders, and prints it/s, images/s, peak GPU memory and projected times for
recipe.md's job (1875 steps at 512). Nothing is downloaded. Usage: bench/gpu/run.sh --help.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
TESTS = CONTAINERS / "trainer/tests"
# The same import paths the trainer image sets (PYTHONPATH=/opt/app/src), plus the tests' helpers.
SRC = [str(CONTAINERS / "common/src"), str(CONTAINERS / "trainer/src"), str(TESTS)]
sys.path[:0] = SRC
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [*SRC, os.environ.get("PYTHONPATH")] if p)

PLAN_FIXTURE = ROOT / "test/fixtures/contract/plan-recipe-25.json"
RECIPE_STEPS = 1875  # recipe.md: 25 images x 15 repeats x 5 epochs / batch 1
IMAGES = 10
EPOCHS = 2  # two checkpoints: the epoch save and the final save are both in the timing
TEAM = "bench"
BASE_KEY = "models/sd15-random.safetensors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/gpu/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny model on CPU (CI): checks the wiring, measures nothing useful")
    ap.add_argument("--steps", type=int, default=200, help="training steps per configuration (default 200)")
    ap.add_argument("--configs", default=None, help="resolution x batch list (default 512x1,512x2,768x1,768x2; --cpu: 512x1,512x2)")
    ap.add_argument(
        "--sd-scripts",
        default=os.environ.get("AVATAR_SD_SCRIPTS_DIR"),
        help="kohya sd-scripts checkout at the pinned commit (default $AVATAR_SD_SCRIPTS_DIR); without it --cpu uses the stand-in",
    )
    ap.add_argument("--eval-steps", type=int, default=None, help="sampler steps per render (default 35 as recipe.md; --cpu: 2)")
    ap.add_argument("--out", default=None, help="work folder (default a new temporary one); results.json is written there")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (one per epoch)")
    args.configs = [
        tuple(int(x) for x in c.lower().split("x"))
        for c in (args.configs or ("512x1,512x2" if args.cpu else "512x1,512x2,768x1,768x2")).split(",")
    ]
    for res, batch in args.configs:
        if res not in (512, 768) or batch not in (1, 2):
            ap.error(f"--configs: {res}x{batch} is not one of 512/768 x 1/2 (the contract's resolutions and batches)")
    args.eval_steps = args.eval_steps or (2 if args.cpu else 35)
    if args.sd_scripts and not (Path(args.sd_scripts) / "train_network.py").is_file():
        ap.error(f"--sd-scripts {args.sd_scripts}: no train_network.py there")
    if args.cpu and args.sd_scripts:
        ap.error("--cpu runs the kohya stand-in on a tiny model; real kohya needs the full-size U-Net (see test_train_real_kohya.py)")
    if not args.cpu and not args.sd_scripts:
        ap.error("the GPU mode needs --sd-scripts (or AVATAR_SD_SCRIPTS_DIR): a kohya sd-scripts checkout at the pinned commit")
    return args


# ---------------------------------------------------------------- the model
def build_model(folder: Path, full: bool, device: str) -> dict:
    """A random SD 1.5-shaped pipeline saved as diffusers folders, plus the configs-only folder.

    full: SD 1.5's real shapes (860M U-Net, 84M VAE, 123M ViT-L/14 text encoder, 49408-token
    embedding). The tokenizer is a small letter-level CLIP tokenizer written here: every prompt is
    padded to 77 tokens, so its vocabulary changes no tensor shape and no timing.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import tiny_sd

    pipe_dir, config_dir, tok_dir = folder / "pipeline", folder / "sd15-config", folder / "tokenizers/openai_clip-vit-large-patch14"
    if not full:
        tiny_sd.build_pipeline(pipe_dir)
        shutil.copytree(pipe_dir / "tokenizer", tok_dir)
    else:
        tiny_sd._write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        torch.manual_seed(0)
        with torch.device(device):  # initialising 1B parameters on the GPU takes seconds, not a minute
            # diffusers' defaults are SD 1.5's U-Net (320/640/1280/1280, 2 layers, 8 heads) but for the context width.
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                layers_per_block=2,
                sample_size=512,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
            )
            # transformers' CLIPTextConfig defaults are ViT-B/32's text model (512 wide): set ViT-L/14's.
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=49408,
                    hidden_size=768,
                    intermediate_size=3072,
                    num_hidden_layers=12,
                    num_attention_heads=12,
                    max_position_embeddings=77,
                    hidden_act="quick_gelu",
                    projection_dim=768,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
        pipe = tiny_sd.assemble_pipeline(vae, text_encoder, tokenizer, unet)
        pipe.to(dtype=torch.float16)
        pipe.save_pretrained(pipe_dir)
        del pipe, unet, vae, text_encoder
        if device == "cuda":
            torch.cuda.empty_cache()
    # What the trainer image bakes at /opt/sd15-config: configs and tokenizer, no weights.
    shutil.copytree(pipe_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return {"pipeline": pipe_dir, "config": config_dir, "tokenizers": tok_dir.parent}


def single_file_checkpoint(pipe_dir: Path, dest: Path, sd_scripts: str) -> bool:
    """Writes the pipeline as an original-layout SD 1.5 single file (what production trains from),
    with kohya's own diffusers-to-SD key conversion. False when that converter is not importable."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, sd_scripts)
    try:
        from library import model_util  # sd-scripts' package

        to_sd_unet, to_sd_vae = model_util.convert_unet_state_dict_to_sd, model_util.convert_vae_state_dict
    except (ImportError, AttributeError) as e:
        print(f"bench: kohya's diffusers-to-SD converter (library.model_util) is not importable from {sd_scripts}: {e}")
        return False
    finally:
        sys.path.remove(sd_scripts)
    unet = UNet2DConditionModel.from_pretrained(pipe_dir / "unet").state_dict()
    vae = AutoencoderKL.from_pretrained(pipe_dir / "vae").state_dict()
    te = load_file(pipe_dir / "text_encoder/model.safetensors")
    sd = {"model.diffusion_model." + k: v for k, v in to_sd_unet(False, unet).items()}
    sd |= {"first_stage_model." + k: v for k, v in to_sd_vae(vae).items()}
    sd |= {"cond_stage_model.transformer." + k: v for k, v in te.items()}
    # Present in the released SD 1.5 file; kohya and diffusers both expect to meet it.
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    save_file({k: v.contiguous().to(torch.float16) if v.is_floating_point() else v.contiguous() for k, v in sd.items()}, str(dest))
    return True


# ---------------------------------------------------------------- local S3
def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("bench: moto_server did not start (is moto[server] installed?)") from None
            time.sleep(0.1)


# ---------------------------------------------------------------- GPU memory
class PeakMemory:
    """Peak GPU memory of every process (kohya runs in its own), polled with nvidia-smi."""

    def __init__(self):
        self.peak_mib: int | None = None
        self.baseline_mib = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _used() -> int | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return int(out.stdout.split()[0]) if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            used = self._used()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0, used)

    def __enter__(self):
        if self.baseline_mib is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def gib(self) -> float | None:
        if self.peak_mib is None or self.baseline_mib is None:
            return None
        return round((self.peak_mib - self.baseline_mib) / 1024, 2)


# ---------------------------------------------------------------- one train run
def plan_for(res: int, batch: int, steps: int, job_id: str, cpu: bool) -> dict:
    plan = json.loads(PLAN_FIXTURE.read_text())
    images = max(1, min(IMAGES, steps * batch // EPOCHS))  # fewer images only for a handful of steps
    repeats = max(1, round(steps * batch / (images * EPOCHS)))
    total = math.ceil(images * repeats * EPOCHS / batch)
    token = plan["spec"]["token"]
    plan.update(teamId=TEAM, jobId=job_id, userCaptions=[], images=[f"{token}-{i:02d}.png" for i in range(1, images + 1)])
    plan["plan"].update(
        numImages=images,
        repeats=repeats,
        epochs=EPOCHS,
        batchSize=batch,
        totalSteps=total,
        resolution=res,
        folder=f"{repeats}_{token}",
        arithmetic=f"{images} images x {repeats} repeats x {EPOCHS} epochs / batch {batch} = {total} steps (bench)",
    )
    plan["spec"]["training"]["batchSize"] = batch
    if cpu:
        plan["spec"]["training"].update(networkDim=8, networkAlpha=8)
    if importlib.util.find_spec("bitsandbytes") is None and plan["spec"]["training"]["optimizer"] == "AdamW8bit":
        print("bench: bitsandbytes is not installed: AdamW instead of AdamW8bit (about as fast; ~1 GB more GPU memory at dim 128)")
        plan["spec"]["training"]["optimizer"] = "AdamW"
    return plan


def seed_job(s3, bucket: str, plan: dict, image_px: int) -> None:
    import numpy as np
    from PIL import Image

    prefix = f"teams/{TEAM}/jobs/{plan['jobId']}/"
    folder = plan["plan"]["folder"]
    s3.put_object(Bucket=bucket, Key=prefix + "normalize/plan.json", Body=json.dumps(plan))
    rng = np.random.default_rng(0)
    for i, name in enumerate(plan["images"]):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8)).save(buf, "PNG")
        s3.put_object(Bucket=bucket, Key=prefix + f"normalize/{folder}/{name}", Body=buf.getvalue())
        s3.put_object(
            Bucket=bucket,
            Key=prefix + f"caption/{folder}/{Path(name).stem}.txt",
            Body=f"photo of {plan['spec']['token']}, a man in a red shirt standing in a kitchen, picture {i}\n".encode(),
        )


def run_stage_in_process(stage: str, job_id: str, env: dict) -> tuple[int, float, dict]:
    """Runs a stage the way `python -m trainer <stage>` does, in this process so its hooks can time it."""
    from avatar_job import run_stage

    os.environ.update(env, AVATAR_JOB_ID=job_id)
    if stage == "train":
        from trainer.train import train_stage as body
    else:
        from trainer.evaluate import evaluate_stage as body
    start = time.monotonic()
    rc = run_stage(stage, body)
    wall = time.monotonic() - start
    import boto3

    status = json.loads(
        boto3.client("s3").get_object(Bucket=env["AVATAR_ARTIFACTS_BUCKET"], Key=f"teams/{TEAM}/jobs/{job_id}/status.json")["Body"].read()
    )
    return rc, wall, status


def train_once(res: int, batch: int, args, env: dict, s3, bucket: str, out: Path) -> dict:
    from trainer.supervise import Supervisor

    job_id = f"r{res}-b{batch}"
    plan = plan_for(res, batch, args.steps, job_id, args.cpu)
    seed_job(s3, bucket, plan, 64 if args.cpu else res)
    events: list[tuple[float, int]] = []
    original = Supervisor.on_event

    def timed(self, ev):  # every optimizer step kohya reports, with the time it arrived
        if ev.kind == "step":
            events.append((time.monotonic(), ev.step))
        return original(self, ev)

    Supervisor.on_event = timed
    try:
        with PeakMemory() as mem:
            rc, wall, status = run_stage_in_process("train", job_id, {**env, "AVATAR_WORK_DIR": str(out / f"work-{job_id}")})
    finally:
        Supervisor.on_event = original
    row = {
        "config": f"{res}px batch {batch}",
        "resolution": res,
        "batch": batch,
        "steps": plan["plan"]["totalSteps"],
        "wallS": round(wall, 1),
        "peakGpuGiB": mem.gib,
        "ok": rc == 0,
    }
    if rc != 0:
        row["error"] = status.get("error")
        return row
    # The rate from the first 10% of steps on: the warm-up (CUDA kernels, data loader start) is
    # counted in the fixed overhead instead.
    total = plan["plan"]["totalSteps"]
    warm = [e for e in events if e[1] >= max(1, total // 10)]
    if len(warm) >= 2 and warm[-1][1] > warm[0][1]:
        it_s = (warm[-1][1] - warm[0][1]) / (warm[-1][0] - warm[0][0])
        row.update(itPerS=round(it_s, 2), imagesPerS=round(it_s * batch, 2), overheadS=round(max(0.0, wall - total / it_s), 1))
    return row


# ---------------------------------------------------------------- evaluate
def evaluate_once(args, env: dict, s3, bucket: str, model: dict, out: Path) -> dict:
    from safetensors.torch import save_file

    from trainer import evaluate as eval_mod
    from trainer.verify import sha256

    job_id = "r512-b1"  # the checkpoints the first run published
    prefix = f"teams/{TEAM}/jobs/{job_id}/"
    plan = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "normalize/plan.json")["Body"].read())
    ev = plan["spec"]["evaluation"]
    # 2 prompts x (base + 2 checkpoints x 6 strengths) = 26 grid renders, plus the pack, at the recipe's 35 steps, 512 px.
    ev.update(steps=args.eval_steps, prompts=[ev["prompts"][0], "a photo of {token} as an astronaut on the moon"])
    if args.cpu:
        ev.update(width=256, height=256, strengths=[1.0], prompts=ev["prompts"][:1])  # 3 renders
    s3.put_object(Bucket=bucket, Key=prefix + "normalize/plan.json", Body=json.dumps(plan))
    # The evaluator scores renders with CLIP ViT-B/32, baked into the image; offline, a tiny random CLIP
    # stands in (scoring is a small fraction of a render's time; said in the report).
    import tiny_clip

    extra = {"AVATAR_CLIP_MODEL_DIR": str(tiny_clip.save_tiny_clip(out / "clip"))}
    if args.cpu and not args.sd_scripts:
        # The stand-in's LoRA files name modules of no real model: put LoRAs for the tiny
        # pipeline in their place (as test_evaluate does), keeping names and sha256 metadata.
        import tiny_sd

        for e in range(1, plan["plan"]["epochs"] + 1):
            name = f"{plan['outputName']}-{e:06d}.safetensors" if e < plan["plan"]["epochs"] else f"{plan['outputName']}.safetensors"
            path = out / name
            save_file(tiny_sd.kohya_lora(model["pipeline"], seed=e), str(path))
            s3.upload_file(str(path), bucket, prefix + "train/" + name, ExtraArgs={"Metadata": {"sha256": sha256(path)}})
        extra["AVATAR_EVAL_PIPELINE_DIR"] = str(model["pipeline"])
    elif not model.get("singleFile"):
        extra["AVATAR_EVAL_PIPELINE_DIR"] = str(model["pipeline"])

    times: list[float] = []
    original = eval_mod.Renderer.__call__

    def timed(self, *args, **kwargs):
        start = time.monotonic()
        try:
            return original(self, *args, **kwargs)
        finally:
            times.append(time.monotonic() - start)

    eval_mod.Renderer.__call__ = timed
    try:
        with PeakMemory() as mem:
            rc, wall, status = run_stage_in_process("evaluate", job_id, {**env, **extra, "AVATAR_WORK_DIR": str(out / "work-evaluate")})
    finally:
        eval_mod.Renderer.__call__ = original
    row = {
        "renders": len(times),
        "steps": ev["steps"],
        "size": f"{ev['width']}x{ev['height']}",
        "wallS": round(wall, 1),
        "peakGpuGiB": mem.gib,
        "ok": rc == 0,
        "pipeline": ("diffusers folder" if "AVATAR_EVAL_PIPELINE_DIR" in extra else "single file + baked configs") + ", tiny CLIP scorer",
    }
    if rc != 0:
        row["error"] = status.get("error")
    elif times:
        # The first render pays for kernel selection; the rest are the steady rate.
        steady = times[1:] or times
        row.update(imagesPerS=round(len(steady) / sum(steady), 3), overheadS=round(max(0.0, wall - sum(times)), 1))
    return row


# ---------------------------------------------------------------- report
def recipe_renders() -> int:
    """Renders of the evaluate stage for recipe.md's job, counted the way evaluate.py counts them:
    prompts x (base + checkpoints x strengths) + pack prompts x pack seeds."""
    from trainer import evaluate as eval_mod
    from trainer import prompt_sets

    plan = json.loads(PLAN_FIXTURE.read_text())
    spec = plan["spec"]
    grid = len(eval_mod.prompts(plan)) * (1 + len(eval_mod.checkpoints(plan)) * len(spec["evaluation"]["strengths"]))
    return grid + len(prompt_sets.pack_prompts(spec)) * len(prompt_sets.pack_seeds(spec))


def fmt(v, unit=""):
    return "n/a" if v is None else f"{v}{unit}"


def report(rows: list[dict], ev: dict | None, meta: dict) -> list[str]:
    lines = [
        f"bench/gpu on {meta['device']} ({meta['mode']}); kohya: {meta['kohya']}; attention: {meta['attention']}",
        f"{'config':<16}{'steps':>6}{'it/s':>10}{'img/s':>10}{'overhead s':>12}{'peak GiB':>10}{'wall s':>8}",
    ]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['config']:<16} FAILED: {r.get('error')}")
            continue
        lines.append(
            f"{r['config']:<16}{r['steps']:>6}{fmt(r.get('itPerS')):>10}{fmt(r.get('imagesPerS')):>10}"
            f"{fmt(r.get('overheadS')):>12}{fmt(r['peakGpuGiB']):>10}{r['wallS']:>8}"
        )
    if ev:
        if ev["ok"]:
            lines.append(
                f"evaluate: {ev['renders']} renders of {ev['steps']} steps at {ev['size']} ({ev['pipeline']}): "
                f"{fmt(ev.get('imagesPerS'))} images/s, overhead {fmt(ev.get('overheadS'))} s, peak {fmt(ev['peakGpuGiB'])} GiB, wall {ev['wallS']} s"
            )
        else:
            lines.append(f"evaluate FAILED: {ev.get('error')}")
    # Projections for recipe.md's job on THIS device: fixed overhead + steps / rate.
    for r in rows:
        if r["ok"] and r["resolution"] == 512 and r.get("itPerS"):
            steps = math.ceil(RECIPE_STEPS / r["batch"])
            train_s = r["overheadS"] + steps / r["itPerS"]
            note = "" if r["batch"] == 1 else " (same images seen; batch 2 changes the recipe: check quality before adopting)"
            lines.append(
                f"projected recipe training at 512 batch {r['batch']}: {steps} steps -> {train_s / 60:.1f} min on this device{note}"
            )
    if ev and ev.get("imagesPerS"):
        renders = recipe_renders()
        lines.append(
            f"projected recipe evaluation: {renders} renders x {ev['steps']} steps -> "
            f"{(ev['overheadS'] + renders / ev['imagesPerS']) / 60:.1f} min on this device"
        )
    if meta["mode"] == "cpu":
        lines.append("CPU mode: wiring check only; these figures say nothing about a GPU")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("bench: no CUDA device; use --cpu for the wiring check")
    device = "cpu" if args.cpu else "cuda"
    out = Path(args.out) if args.out else Path(__import__("tempfile").mkdtemp(prefix="bench-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    from trainer import kohya

    meta = {
        "mode": device,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU",
        "attention": kohya.attention(),
        "torch": torch.__version__,
        "kohya": f"sd-scripts at {args.sd_scripts}"
        if args.sd_scripts
        else "the stand-in containers/trainer/tests/fake_kohya.py (no --sd-scripts given)",
    }
    print(f"bench: {meta['kohya']}; work folder {out}", flush=True)

    t = time.monotonic()
    model = build_model(out / "model", full=not args.cpu, device=device)
    base = out / "model/sd15-random.safetensors"
    model["singleFile"] = bool(args.sd_scripts) and single_file_checkpoint(model["pipeline"], base, args.sd_scripts)
    if args.sd_scripts and not model["singleFile"]:
        raise SystemExit("bench: cannot write the single-file checkpoint production trains from; see the message above")
    if not model["singleFile"]:
        # The stand-in reads no model: the object in S3 is only what fetch_base_model downloads and checks.
        base = model["pipeline"] / "unet" / "diffusion_pytorch_model.safetensors"
    print(
        f"bench: model built in {time.monotonic() - t:.0f} s ({'single-file checkpoint' if model['singleFile'] else 'diffusers folder'})",
        flush=True,
    )

    moto, endpoint = start_moto()
    try:
        import boto3

        bucket = "bench-artifacts"
        env = {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AVATAR_TEAM_ID": TEAM,
            "AVATAR_INBOX_BUCKET": "bench-inbox",
            "AVATAR_ARTIFACTS_BUCKET": bucket,
            "AVATAR_CACHE_DIR": str(out / "cache"),
            "AVATAR_BASE_MODEL_KEY": BASE_KEY,
            "AVATAR_TOKENIZER_CACHE_DIR": str(model["tokenizers"]),
            "AVATAR_SD_CONFIG_DIR": str(model["config"]),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        os.environ.update(env)
        if args.sd_scripts:
            os.environ["AVATAR_SD_SCRIPTS_DIR"] = args.sd_scripts
            os.environ.pop("AVATAR_KOHYA_CMD", None)
        else:
            os.environ["AVATAR_KOHYA_CMD"] = f"{sys.executable} {TESTS / 'fake_kohya.py'}"
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=bucket)
        s3.create_bucket(Bucket="bench-inbox")
        from trainer.verify import sha256

        # As the operator uploads it: the stages check every cached copy against this sha256.
        s3.upload_file(str(base), bucket, BASE_KEY, ExtraArgs={"Metadata": {"sha256": sha256(base)}})

        rows = []
        for res, batch in args.configs:
            print(f"bench: training {res}px batch {batch}, {args.steps} steps", flush=True)
            rows.append(train_once(res, batch, args, env, s3, bucket, out))
        ev = None
        if rows and rows[0]["ok"] and (rows[0]["resolution"], rows[0]["batch"]) == (512, 1):
            print("bench: evaluating the 512px batch 1 checkpoints", flush=True)
            ev = evaluate_once(args, env, s3, bucket, model, out)
    finally:
        moto.terminate()
        moto.wait(timeout=10)

    lines = report(rows, ev, meta)
    lines.append(f"bench: finished in {time.monotonic() - started:.0f} s")
    print("\n".join(lines), flush=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "train": rows, "evaluate": ev}, indent=2))
    print(f"bench: results in {out / 'results.json'}")
    return 0 if all(r["ok"] for r in rows) and (ev is None or ev["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
