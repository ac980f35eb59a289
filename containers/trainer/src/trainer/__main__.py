"""`python -m trainer train | evaluate | self-test`."""

from __future__ import annotations

import argparse
import sys


def self_test() -> int:
    """Run at docker build: every import works, sd-scripts and the offline tokenizer cache are in place."""
    import os
    from pathlib import Path

    import accelerate  # noqa: F401,E401
    import torch
    import transformers

    from avatar_job import SCHEMA_PATH

    from . import evaluate, kohya, train  # noqa: F401

    assert SCHEMA_PATH.is_file(), f"missing {SCHEMA_PATH}"
    sd = Path(os.environ.get("AVATAR_SD_SCRIPTS_DIR") or "/opt/sd-scripts")
    assert (sd / "train_network.py").is_file() and (sd / "networks/lora.py").is_file(), f"no sd-scripts checkout at {sd}"
    tok = Path(os.environ.get("AVATAR_TOKENIZER_CACHE_DIR") or "/opt/tokenizers") / "openai_clip-vit-large-patch14"
    transformers.CLIPTokenizer.from_pretrained(tok, local_files_only=True)
    clip = Path(os.environ.get("AVATAR_CLIP_MODEL_DIR") or evaluate.scores.DEFAULT_CLIP_DIR)
    assert (clip / "config.json").is_file() and (clip / "preprocessor_config.json").is_file(), f"no CLIP scoring model at {clip}"
    print(
        f"self-test ok: sd-scripts {os.environ.get('AVATAR_SD_SCRIPTS_COMMIT', '?')} at {sd}, tokenizer at {tok}, CLIP at {clip}, torch {torch.__version__}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainer")
    parser.add_argument("command", choices=["train", "evaluate", "self-test"])
    args = parser.parse_args(argv)
    if args.command == "self-test":
        return self_test()
    from avatar_job import run_stage

    if args.command == "train":
        from .train import train_stage

        return run_stage("train", train_stage)
    from .evaluate import evaluate_stage

    return run_stage("evaluate", evaluate_stage)


if __name__ == "__main__":
    sys.exit(main())
