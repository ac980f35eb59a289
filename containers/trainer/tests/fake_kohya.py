"""A stand-in for `accelerate launch train_network.py` that behaves like it at the process boundary.

Reads --config_file (and the dataset TOML it names), prints kohya's summary and `epoch n/N` on
stdout, tqdm bars with avr_loss on stderr (carriage returns), writes small real safetensors files
named, keyed and tagged like networks.lora's, and `<name>-<epoch>-state` folders with
train_state.json; honours --resume; with no images it logs "No data found" and exits 0 like kohya.

Test controls (env): FAKE_KOHYA_NAN_AT_STEP=n (avr_loss=nan from step n on), FAKE_KOHYA_HANG_AFTER_EPOCH=k
(after saving epoch k, sleep until signalled), FAKE_KOHYA_DIM=n (write the wrong rank),
FAKE_KOHYA_SEE_NO_IMAGES=1 (find no images),
FAKE_KOHYA_ARGS_LOG=path (append argv as JSON), FAKE_KOHYA_STEP_DELAY=s.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import torch
from safetensors.torch import save_file

MODULES = [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
]


def write_lora(path: Path, cfg: dict, epoch: int) -> None:
    dim = int(os.environ.get("FAKE_KOHYA_DIM") or cfg["network_dim"])
    alpha = float(cfg["network_alpha"])
    tensors = {}
    for m in MODULES:
        tensors[f"{m}.lora_down.weight"] = torch.randn(dim, 16, dtype=torch.float16)
        tensors[f"{m}.lora_up.weight"] = torch.zeros(16, dim, dtype=torch.float16)
        tensors[f"{m}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    meta = {"ss_output_name": cfg["output_name"], "ss_network_module": cfg["network_module"],
            "ss_network_dim": str(dim), "ss_network_alpha": str(alpha), "ss_epoch": str(epoch)}
    save_file(tensors, str(path), metadata=meta)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_file", required=True)
    ap.add_argument("--resume")
    args = ap.parse_args()
    if log := os.environ.get("FAKE_KOHYA_ARGS_LOG"):
        with open(log, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\n")
    cfg = tomllib.loads(Path(args.config_file).read_text())
    ds = tomllib.loads(Path(cfg["dataset_config"]).read_text())
    subset = ds["datasets"][0]["subsets"][0]
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    images = [p for p in Path(subset["image_dir"]).glob("*") if p.suffix.lower() in exts]
    if os.environ.get("FAKE_KOHYA_SEE_NO_IMAGES"):  # kohya's view of a mislaid folder
        images = []
    if not images:
        print("No data found. Please verify arguments (train_data_dir must be the parent of folders with images)")
        return 0
    batch = ds["datasets"][0]["batch_size"]
    epochs = cfg["max_train_epochs"]
    per_epoch = math.ceil(len(images) * subset["num_repeats"] / batch)
    total = per_epoch * epochs
    print("running training / 学習開始")
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {len(images) * subset['num_repeats']}")
    print(f"  num batches per epoch / 1epochのバッチ数: {per_epoch}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)

    start = 0
    if args.resume:
        start = json.loads((Path(args.resume) / "train_state.json").read_text())["current_epoch"]
    out, name = Path(cfg["output_dir"]), cfg["output_name"]
    nan_at = int(os.environ.get("FAKE_KOHYA_NAN_AT_STEP") or 0)
    hang_after = int(os.environ.get("FAKE_KOHYA_HANG_AFTER_EPOCH") or 0)
    delay = float(os.environ.get("FAKE_KOHYA_STEP_DELAY") or 0)
    step = start * per_epoch
    for epoch in range(start + 1, epochs + 1):
        print(f"\nepoch {epoch}/{epochs}", flush=True)
        for _ in range(per_epoch):
            step += 1
            loss = float("nan") if nan_at and step >= nan_at else 0.2 / math.sqrt(step)
            pct = int(100 * step / total)
            sys.stderr.write(f"\rsteps: {pct:3d}%|{'█' * (pct // 10):10s}| {step}/{total} [00:0{epoch}<00:10, 5.00it/s, avr_loss={loss:.4g}]")
            sys.stderr.flush()
            time.sleep(delay)
        last = epoch == epochs
        ckpt = out / (f"{name}.safetensors" if last else f"{name}-{epoch:06d}.safetensors")
        print(f"\nsaving checkpoint: {ckpt}", flush=True)
        write_lora(ckpt, cfg, epoch)
        if cfg.get("save_state"):
            state = out / (f"{name}-state" if last else f"{name}-{epoch:06d}-state")
            state.mkdir(parents=True, exist_ok=True)
            (state / "optimizer.bin").write_bytes(os.urandom(256))
            (state / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
        if hang_after and epoch == hang_after:
            while True:  # a long epoch: only a signal ends it
                time.sleep(0.2)
    sys.stderr.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
