"""`python -m captioner run` (the caption stage) or `python -m captioner self-test` (image build check)."""

from __future__ import annotations

import argparse
import sys


def self_test() -> int:
    """Run at docker build: every import works and the baked-in BLIP loads offline."""
    import os

    from avatar_job import SCHEMA_PATH

    from . import blip, run  # noqa: F401  (imports are the test)

    assert SCHEMA_PATH.is_file(), f"missing {SCHEMA_PATH}"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = blip.Blip(blip.model_dir(), device="cpu")
    print(f"self-test ok: BLIP at {blip.model_dir()} ({sum(p.numel() for p in model.model.parameters()) / 1e6:.0f}M parameters)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner")
    parser.add_argument("command", choices=["run", "self-test"])
    args = parser.parse_args(argv)
    if args.command == "self-test":
        return self_test()
    from avatar_job import run_stage

    from .run import caption_stage

    return run_stage("caption", caption_stage)


if __name__ == "__main__":
    sys.exit(main())
