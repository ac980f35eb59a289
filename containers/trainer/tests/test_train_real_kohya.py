"""Opt-in: a few CPU steps through the REAL kohya train_network.py with our TOML, then diffusers loads the LoRA.

Needs an sd-scripts checkout (AVATAR_SD_SCRIPTS_DIR, e.g. a clone at 48d368fa) and about 10 GB of
RAM: kohya's SD1 U-Net has a fixed architecture, so the U-Net is full size (randomly initialised);
the VAE, text encoder depth and tokenizer are tiny. Nothing is downloaded.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

SD = os.environ.get("AVATAR_SD_SCRIPTS_DIR")
pytestmark = [
    pytest.mark.opt_in,
    pytest.mark.skipif(
        not SD or not (Path(SD) / "train_network.py").is_file(),
        reason="set AVATAR_SD_SCRIPTS_DIR to a kohya sd-scripts checkout to run the real-kohya test",
    ),
]


def _tiny_sd(root: Path) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = root / "tokenizers/openai_clip-vit-large-patch14"
    tok_dir.mkdir(parents=True)
    words = ["photo</w>", "of</w>", "anantn</w>", "a</w>", "man</w>", ",</w>"]
    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", *words, *"abcdefghijklmnopqrstuvwxyz"])}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(tok_dir)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=768,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(sample_size=8, cross_attention_dim=768)  # SD1.5's shape: kohya's U-Net is fixed
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def test_real_kohya_trains_a_lora_diffusers_can_load(tmp_path):
    from PIL import Image

    from trainer import kohya
    from trainer.verify import verify_checkpoint

    model = _tiny_sd(tmp_path)
    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["images"] = ["anantn-01.png", "anantn-02.png"]
    plan["plan"].update(numImages=2, repeats=1, epochs=2, totalSteps=4, resolution=512, folder="1_anantn")
    plan["spec"]["training"].update(optimizer="AdamW", networkDim=4, networkAlpha=2, mixedPrecision="no", cacheLatents=False)
    folder = tmp_path / "dataset/1_anantn"
    folder.mkdir(parents=True)
    for i, name in enumerate(plan["images"]):
        Image.new("RGB", (64, 64), (100 * i, 50, 200)).save(folder / name)
        (folder / f"{Path(name).stem}.txt").write_text("photo of anantn, a man\n")
    ds = kohya.dataset_config(plan, tmp_path / "dataset")
    ds["datasets"][0].update(resolution=64, min_bucket_reso=64, max_bucket_reso=128)  # CPU-sized
    (tmp_path / "dataset.toml").write_text(kohya.dataset_toml(ds))
    cfg = kohya.training_config(
        plan,
        base_model=model,
        dataset_toml_path=tmp_path / "dataset.toml",
        output_dir=tmp_path / "out",
        tokenizer_dir=tmp_path / "tokenizers",
        workers=0,
    )
    cfg["resolution"] = "64,64"
    (tmp_path / "config.toml").write_text(kohya.to_toml(cfg))
    assert tomllib.loads((tmp_path / "config.toml").read_text())["resolution"] == "64,64"

    def kohya(name, *args):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--cpu",
                "--num_processes",
                "1",
                "--num_cpu_threads_per_process",
                "1",
                str(Path(SD) / "train_network.py"),
                "--config_file",
                str(tmp_path / "config.toml"),
                *args,
            ],
            cwd=SD,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if out := os.environ.get("AVATAR_KOHYA_TRANSCRIPT_DIR"):  # refreshes tests/fixtures/kohya-*.{out,err}.txt
            for stream, text in (("out", result.stdout), ("err", result.stderr)):
                (Path(out) / f"{name}.{stream}.txt").write_text(text.replace(str(tmp_path), "/tmp/run"))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    result = kohya("kohya-transcript")
    assert "epoch 2/2" in result.stdout

    final = tmp_path / "out/anantn.safetensors"
    assert (tmp_path / "out/anantn-000001.safetensors").is_file() and final.is_file()
    summary = verify_checkpoint(final, "lora", 4, 2.0)
    assert summary["unetModules"] > 0 and summary["textEncoderModules"] > 0
    assert (tmp_path / "out/anantn-000001-state").is_dir()

    # What a retried attempt runs (kohya.launch_command): --resume from the epoch-1 state with
    # --initial_epoch 2 trains epoch 2 only.
    resumed = kohya(
        "kohya-resume-transcript",
        "--resume",
        str(tmp_path / "out/anantn-000001-state"),
        "--initial_epoch",
        "2",
        "--output_dir",
        str(tmp_path / "out-2"),
    )
    assert "epoch 1/2" not in resumed.stdout and "epoch 2/2" in resumed.stdout
    # kohya took --initial_epoch over the state's step count (rich wraps the warning at 80 columns).
    assert re.search(r"steps from the state is\b.{0,80}?\n\s+ignored because initial_step", resumed.stderr, re.S)
    assert (tmp_path / "out-2/anantn.safetensors").is_file() and not (tmp_path / "out-2/anantn-000001.safetensors").exists()

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.load_lora_weights(str(final), adapter_name="anantn")
    assert "anantn" in pipe.get_list_adapters()["unet"]
