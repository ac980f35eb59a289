"""The kohya TOML built from plan.json, read back the way kohya reads it (tomllib, no conversion)."""

import json
import math
import os
import tomllib
from pathlib import Path

import pytest
import toml

from avatar_job import StageError
from conftest import REPO
from trainer import kohya

FIXTURE = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
WORK = Path("/work/job")


def _plan(**training):
    plan = json.loads(json.dumps(FIXTURE))
    plan["spec"]["training"].update(training)
    return plan


def _config(plan, **kw):
    cfg = kohya.training_config(
        plan,
        base_model=Path("/cache/base-models/sd15.safetensors"),
        dataset_toml_path=WORK / "dataset.toml",
        output_dir=WORK / "output",
        tokenizer_dir=Path("/opt/tokenizers"),
        **kw,
    )
    return tomllib.loads(kohya.to_toml(cfg))


def test_recipe_25_photo_config_matches_recipe_table():
    cfg = _config(FIXTURE)
    expected = {
        "train_batch_size": 1,
        "max_train_epochs": 5,
        "text_encoder_lr": 5e-5,
        "unet_lr": 1e-4,
        "lr_scheduler": "polynomial",
        "optimizer_type": "AdamW8bit",
        "network_module": "networks.lora",
        "network_dim": 128,
        "network_alpha": 128.0,
        "mixed_precision": "bf16",
        "resolution": "512,512",
        "save_every_n_epochs": 1,
        "save_state": True,
        "output_name": "anantn",
        "caption_extension": ".txt",
        "cache_latents": True,
        "cache_latents_to_disk": True,
        "sdpa": True,
        "seed": 42,
        "lr_warmup_steps": 0,
        "pretrained_model_name_or_path": "/cache/base-models/sd15.safetensors",
        "tokenizer_cache_dir": "/opt/tokenizers",
        "dataset_config": "/work/job/dataset.toml",
        "output_dir": "/work/job/output",
        "save_model_as": "safetensors",
    }
    assert {k: cfg[k] for k in expected} == expected
    assert isinstance(cfg["resolution"], str)  # kohya does not convert TOML values
    assert "optimizer_args" not in cfg and "network_args" not in cfg and "gradient_checkpointing" not in cfg


def test_recipe_25_photo_dataset_toml_gives_15_repeats_of_15_anantn():
    ds = tomllib.loads(kohya.to_toml(kohya.dataset_config(FIXTURE, WORK / "dataset")))
    assert set(ds) == {"general", "datasets"}
    (dataset,) = ds["datasets"]
    (subset,) = dataset["subsets"]
    assert dataset["batch_size"] == 1 and dataset["resolution"] == 512 and dataset["enable_bucket"] is True
    assert subset["image_dir"] == "/work/job/dataset/15_anantn"
    assert subset["num_repeats"] == 15 and subset["caption_extension"] == ".txt"
    assert (subset["color_aug"], subset["flip_aug"]) == (False, False)
    # 25 images x 15 repeats x 5 epochs / batch 1
    assert 25 * subset["num_repeats"] * 5 // dataset["batch_size"] == FIXTURE["plan"]["totalSteps"] == 1875


def test_dataset_toml_uses_only_keys_kohya_accepts_at_their_level():
    # kohya validates with voluptuous: an unknown key is an error (docs/kohya.md, The dataset TOML).
    ds = tomllib.loads(kohya.to_toml(kohya.dataset_config(FIXTURE, WORK / "dataset")))
    dataset_keys = {
        "batch_size",
        "resolution",
        "enable_bucket",
        "min_bucket_reso",
        "max_bucket_reso",
        "bucket_reso_steps",
        "bucket_no_upscale",
        "network_multiplier",
    }
    subset_keys = {
        "num_repeats",
        "shuffle_caption",
        "keep_tokens",
        "caption_separator",
        "color_aug",
        "flip_aug",
        "random_crop",
        "caption_prefix",
        "caption_suffix",
        "caption_extension",
        "class_tokens",
        "image_dir",
        "is_reg",
    }
    assert set(ds["general"]) <= subset_keys | dataset_keys
    assert set(ds["datasets"][0]) - {"subsets"} <= dataset_keys
    assert set(ds["datasets"][0]["subsets"][0]) <= subset_keys


def test_dadaptation_preset():
    cfg = _config(
        _plan(
            optimizer="DAdaptation",
            unetLr=1,
            textEncoderLr=0.5,
            lrScheduler="constant",
            optimizerArgs=["decouple=True", "weight_decay=0.05"],
        )
    )
    assert (cfg["optimizer_type"], cfg["learning_rate"], cfg["unet_lr"], cfg["text_encoder_lr"], cfg["lr_scheduler"]) == (
        "DAdaptation",
        1,
        1,
        0.5,
        "constant",
    )
    assert cfg["optimizer_args"] == ["decouple=True", "weight_decay=0.05"]


def test_adafactor_preset():
    cfg = _config(
        _plan(
            optimizer="Adafactor",
            unetLr=1,
            textEncoderLr=0.5,
            lrScheduler="adafactor",
            optimizerArgs=["relative_step=True", "scale_parameter=True", "warmup_init=False"],
        )
    )
    assert (cfg["optimizer_type"], cfg["lr_scheduler"], cfg["text_encoder_lr"]) == ("Adafactor", "adafactor", 0.5)
    assert cfg["optimizer_args"] == ["relative_step=True", "scale_parameter=True", "warmup_init=False"]


def test_locon_goes_through_lycoris_with_its_algorithm():
    cfg = _config(_plan(network="locon", networkDim=16, networkAlpha=1))
    assert cfg["network_module"] == "lycoris.kohya"
    assert cfg["network_args"] == ["algo=locon", "conv_dim=16", "conv_alpha=1"]
    assert (cfg["network_dim"], cfg["network_alpha"]) == (16, 1.0)


def test_xformers_replaces_sdpa_when_asked():
    cfg = _config(FIXTURE, attention="xformers")
    assert cfg.get("xformers") is True and "sdpa" not in cfg


def test_gradient_checkpointing_only_when_memory_is_short():
    assert "gradient_checkpointing" not in _config(FIXTURE, gpu_gib=24.0)
    assert _config(FIXTURE, gpu_gib=8.0)["gradient_checkpointing"] is True
    assert kohya.needs_gradient_checkpointing(768, 2, 128, 16.0) is True
    assert kohya.needs_gradient_checkpointing(512, 1, 128, None) is False


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda p: p["plan"].update(folder="15_someone"), "plan.folder"),
        (lambda p: p["plan"].update(totalSteps=1000), "plan.totalSteps"),
        (lambda p: p["plan"].update(numImages=24), "plan.numImages"),
        (lambda p: p["images"].__setitem__(4, "anantn-05.heic"), "anantn-05.heic"),
        (lambda p: p["images"].__setitem__(4, "anantn-01.jpg"), "anantn-01.jpg"),
        (lambda p: p["images"].__setitem__(4, "../escape.png"), "../escape.png"),
    ],
)
def test_impossible_plans_are_rejected_before_launch(change, field):
    plan = _plan()
    change(plan)
    with pytest.raises(StageError) as e:
        kohya.check_plan(plan)
    assert e.value.code == "PLAN_IMPOSSIBLE" and e.value.input == field


def test_the_recipe_plan_passes_the_checks():
    kohya.check_plan(_plan())  # raises on failure; the values are asserted above


def test_launch_command_uses_accelerate_and_resume(monkeypatch, tmp_path):
    monkeypatch.delenv("AVATAR_KOHYA_CMD", raising=False)
    (tmp_path / "train_network.py").write_text("")
    monkeypatch.setenv("AVATAR_SD_SCRIPTS_DIR", str(tmp_path))
    cmd, cwd = kohya.launch_command(Path("/w/config.toml"), Path("/w/output/anantn-000002-state"), 2)
    assert cmd == [
        "accelerate",
        "launch",
        "--num_cpu_threads_per_process",
        "1",
        str(tmp_path / "train_network.py"),
        "--config_file",
        "/w/config.toml",
        "--resume",
        "/w/output/anantn-000002-state",
        "--initial_epoch",
        "3",
    ]
    assert cwd == tmp_path


def test_missing_sd_scripts_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("AVATAR_KOHYA_CMD", raising=False)
    monkeypatch.setenv("AVATAR_SD_SCRIPTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(StageError) as e:
        kohya.launch_command(Path("/w/config.toml"), None)
    assert e.value.code == "KOHYA_MISSING"


def test_recipe_config_carries_every_speed_setting():
    # The fast path for the recipe on a 24 GB A10G: memory-efficient attention, latents encoded once
    # (to disk, in batches of 4), persistent workers, bf16, and no gradient checkpointing.
    cfg = _config(FIXTURE, attention="sdpa", gpu_gib=22.0, workers=3)
    fast = {
        "sdpa": True,
        "cache_latents": True,
        "cache_latents_to_disk": True,
        "vae_batch_size": 4,
        "max_data_loader_n_workers": 3,
        "persistent_data_loader_workers": True,
        "mixed_precision": "bf16",
    }
    assert {k: cfg.get(k) for k in fast} == fast
    assert "gradient_checkpointing" not in cfg and "xformers" not in cfg
    # ... and the recipe's results are untouched: the same steps, rates, rank and alpha.
    recipe = {
        "max_train_epochs": 5,
        "train_batch_size": 1,
        "unet_lr": 1e-4,
        "text_encoder_lr": 5e-5,
        "network_dim": 128,
        "network_alpha": 128.0,
        "lr_scheduler": "polynomial",
        "optimizer_type": "AdamW8bit",
    }
    assert {k: cfg[k] for k in recipe} == recipe


def test_no_workers_means_no_persistent_workers():
    # kohya refuses persistent_data_loader_workers with 0 workers.
    cfg = _config(FIXTURE, workers=0)
    assert (cfg["max_data_loader_n_workers"], cfg["persistent_data_loader_workers"]) == (0, False)


def test_no_latent_cache_when_colour_augmentation_is_on():
    cfg = _config(_plan(cacheLatents=False, colorAug=True))
    assert (cfg["cache_latents"], cfg["cache_latents_to_disk"]) == (False, False)
    ds = kohya.dataset_config(_plan(cacheLatents=False, colorAug=True), WORK / "dataset")
    assert ds["datasets"][0]["subsets"][0]["color_aug"] is True


def test_a10g_trains_768_batch_2_without_gradient_checkpointing_but_a_16_gb_card_needs_it():
    a10g = 22.0  # what torch reports for a 24 GB A10G
    assert kohya.needs_gradient_checkpointing(512, 1, 128, a10g) is False
    assert kohya.needs_gradient_checkpointing(768, 2, 128, a10g) is False
    assert kohya.needs_gradient_checkpointing(768, 2, 128, 14.6) is True  # a 16 GB T4


@pytest.mark.parametrize(
    "cpus, shm, cache, workers",
    [
        (4, 2**30, True, 3),  # g5.xlarge job: one vCPU left to the training process
        (16, None, True, 8),  # kohya's cap
        (1, 2**30, True, 0),
        (4, 64 * 2**20, True, 3),  # cached latents: tiny batches, Docker's default /dev/shm is enough
        (4, 64 * 2**20, False, 0),  # decoded images through a 64 MiB /dev/shm would crash workers
        (4, 256 * 2**20, False, 2),
    ],
)
def test_data_loader_workers_follow_vcpus_and_shared_memory(cpus, shm, cache, workers):
    assert kohya.data_loader_workers(cpus, shm, cache) == workers


def test_attention_prefers_xformers_when_installed(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "xformers" else None)
    assert kohya.attention({}) == "xformers"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert kohya.attention({}) == "sdpa"
    assert kohya.attention({"AVATAR_ATTENTION": "sdpa"}) == "sdpa"
    with pytest.raises(StageError) as e:
        kohya.attention({"AVATAR_ATTENTION": "flash"})
    assert e.value.input == "AVATAR_ATTENTION"


def test_available_cpus_and_shm_are_read_from_this_machine():
    assert 1 <= kohya.available_cpus() <= (os.cpu_count() or 1)
    shm = kohya.shm_bytes()
    assert shm is None or shm > 0


def test_the_toml_reads_back_identically_with_the_package_kohya_reads_it_with():
    cfg = kohya.training_config(
        FIXTURE, base_model=WORK / "m.safetensors", dataset_toml_path=WORK / "d.toml", output_dir=WORK / "o", tokenizer_dir=WORK / "t"
    )
    cfg["optimizer_args"] = ['betas="0.9,0.99"', "weight_decay=0.01"]
    assert toml.loads(kohya.to_toml(cfg)) == cfg
    ds = kohya.dataset_config(FIXTURE, WORK / 'data "quoted" \\ dir')
    assert toml.loads(kohya.to_toml(ds)) == ds == tomllib.loads(kohya.to_toml(ds))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_refused_naming_its_key(bad):
    with pytest.raises(ValueError, match=r"datasets\.0\.subsets\.0\.x = .* has no TOML form"):
        kohya.to_toml({"datasets": [{"subsets": [{"x": bad}]}]})
