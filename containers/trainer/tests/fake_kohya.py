"""A stand-in for `accelerate launch train_network.py` that behaves like it at the process boundary.

Reads --config_file (and the dataset TOML it names), prints kohya's summary and `epoch n/N` on
stdout, tqdm bars with avr_loss on stderr (carriage returns), writes small real safetensors files
named, keyed and tagged like networks.lora's, and `<name>-<epoch>-state` folders; honours --resume;
with no images it logs "No data found" and exits 0 like kohya.

Checked against a real sd-scripts 48d368fa run (tests/fixtures/kohya-transcript.*.txt, captured by
test_train_real_kohya.py; test_train_progress.py parses both it and this stand-in's output with the
same parser and compares the line shapes):
- stdout: the summary block, "\nepoch n/N\n", "\nsaving checkpoint: <path>";
- stderr: tqdm "steps: ...| i/T [..., avr_loss=x]" (avr_loss with 3 significant digits) and the
  logger's "saving state at epoch n" / "saving last state.";
- write order per epoch k < N: checkpoint, then the state folder; after the last epoch: the
  `<name>-state` folder, then the final checkpoint;
- a state folder gets train_state.json FIRST (accelerate's save pre-hook), then model.safetensors,
  optimizer.bin, scheduler.bin, sampler.bin, sampler_1.bin, random_states_0.pkl;
- --resume fails like accelerate.load_state (FileNotFoundError, exit 1) when a file is missing;
  it starts at epoch --initial_epoch, else at train_state.json's current_step // steps per epoch;
  and the step count starts again at 0 (tqdm shows 1/T after the resumed epochs, and the next
  state records that count), as in tests/fixtures/kohya-resume-transcript.*.txt.

Test controls (env): FAKE_KOHYA_NAN_AT_STEP=n (avr_loss=nan from step n on), FAKE_KOHYA_HANG_AFTER_EPOCH=k
(after saving epoch k, start epoch k+1 and sleep there until signalled), FAKE_KOHYA_SAVE_DELAY=s
(pause before each state file after train_state.json, so a test can kill it mid-save; only in epoch
FAKE_KOHYA_SAVE_DELAY_EPOCH's save when that is set),
FAKE_KOHYA_DIM=n (write the wrong rank), FAKE_KOHYA_SEE_NO_IMAGES=1 (find no images),
FAKE_KOHYA_ARGS_LOG=path (append argv as JSON), FAKE_KOHYA_ENV_LOG=path (write the env's variable names),
FAKE_KOHYA_STEP_DELAY=s.
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
    meta = {
        "ss_output_name": cfg["output_name"],
        "ss_network_module": cfg["network_module"],
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_epoch": str(epoch),
    }
    save_file(tensors, str(path), metadata=meta)


# accelerator.save_state's files after train_state.json, in the order accelerate writes them.
STATE_FILES = ["model.safetensors", "optimizer.bin", "scheduler.bin", "sampler.bin", "sampler_1.bin", "random_states_0.pkl"]


def log(message: str) -> None:
    """kohya's rich logger, on stderr."""
    sys.stderr.write(f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} INFO     {message}\n")
    sys.stderr.flush()


def save_state(state: Path, cfg: dict, epoch: int, step: int, delay: float) -> None:
    log(f"Saving current state to {state}")
    state.mkdir(parents=True, exist_ok=True)
    # train_network.py's save_model_hook, an accelerate save pre-hook, writes this before anything else.
    (state / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    log(f"save train state to {state / 'train_state.json'} at epoch {epoch} step {step}")
    for name in STATE_FILES:
        time.sleep(delay)
        if name == "model.safetensors":
            write_lora(state / name, cfg, epoch)
        else:
            (state / name).write_bytes(os.urandom(256))


def load_state(state: Path) -> dict:
    """Like accelerate.load_state: every file must be there and readable."""
    from safetensors import safe_open

    for name in STATE_FILES:
        if not (state / name).is_file():
            sys.stderr.write(
                f"Traceback (most recent call last):\nFileNotFoundError: [Errno 2] No such file or directory: '{state / name}'\n"
            )
            sys.exit(1)
    with safe_open(str(state / "model.safetensors"), "pt") as f:
        assert f.keys()
    return json.loads((state / "train_state.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_file", required=True)
    ap.add_argument("--resume")
    ap.add_argument("--initial_epoch", type=int)
    args = ap.parse_args()
    if args_log := os.environ.get("FAKE_KOHYA_ARGS_LOG"):
        with open(args_log, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\n")
    if env_log := os.environ.get("FAKE_KOHYA_ENV_LOG"):
        Path(env_log).write_text("\n".join(sorted(os.environ)) + "\n")
    cfg = tomllib.loads(Path(args.config_file).read_text())
    resumed = load_state(Path(args.resume)) if args.resume else None
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
    if args.initial_epoch:
        start = args.initial_epoch - 1
    elif resumed:
        start = resumed["current_step"] // per_epoch
    out, name = Path(cfg["output_dir"]), cfg["output_name"]
    out.mkdir(parents=True, exist_ok=True)  # save_model's os.makedirs
    nan_at = int(os.environ.get("FAKE_KOHYA_NAN_AT_STEP") or 0)
    hang_after = int(os.environ.get("FAKE_KOHYA_HANG_AFTER_EPOCH") or 0)
    delay = float(os.environ.get("FAKE_KOHYA_STEP_DELAY") or 0)
    save_delay = float(os.environ.get("FAKE_KOHYA_SAVE_DELAY") or 0)
    slow_epoch = int(os.environ.get("FAKE_KOHYA_SAVE_DELAY_EPOCH") or 0)

    def delay_in(e):
        return save_delay if not slow_epoch or e == slow_epoch else 0.0

    step = 0  # kohya's global_step, 0 again after a resume
    bar = ""
    for epoch in range(start + 1, epochs + 1):
        print(f"\nepoch {epoch}/{epochs}\n", flush=True)
        if hang_after and epoch == hang_after + 1:
            while True:  # a long epoch: only a signal ends it
                time.sleep(0.2)
        for i in range(1, per_epoch + 1):
            step += 1
            # The loss falls with the training done so far, resumed or not.
            loss = float("nan") if nan_at and step >= nan_at else 0.2 / math.sqrt((epoch - 1) * per_epoch + i)
            pct = int(100 * step / total)
            bar = f"\rsteps: {pct:3d}%|{'█' * (pct // 10):10s}| {step}/{total} [00:0{epoch}<00:10, 5.00it/s, avr_loss={loss:.3g}]"
            sys.stderr.write(bar)
            sys.stderr.flush()
            time.sleep(delay)
        if epoch < epochs:
            ckpt = out / f"{name}-{epoch:06d}.safetensors"
            print(f"\nsaving checkpoint: {ckpt}", flush=True)
            write_lora(ckpt, cfg, epoch)
            if cfg.get("save_state"):
                log(f"saving state at epoch {epoch}")
                save_state(out / f"{name}-{epoch:06d}-state", cfg, epoch, step, delay_in(epoch))
    # After the loop: the last state first, then the final checkpoint (train_network.py's order).
    if cfg.get("save_state"):
        log("saving last state.")
        save_state(out / f"{name}-state", cfg, epochs, step, delay_in(epochs))
    ckpt = out / f"{name}.safetensors"
    print(f"\nsaving checkpoint: {ckpt}", flush=True)
    write_lora(ckpt, cfg, epochs)
    log("model saved.")
    sys.stderr.write(bar + "\n")  # tqdm's close draws the bar once more
    return 0


if __name__ == "__main__":
    sys.exit(main())
