"""`python -m avatar_job caption train`: several stages in one Batch job, one process each, in order.

The GPU job that captions and trains runs this (the design card's "one job: captioning, then kohya
training"): each stage keeps its own name, command, S3 prefix and status.json reports, and runs in its
own process, so BLIP's GPU memory is returned to the driver before kohya starts. The first stage that
fails ends the job with its exit code. SIGTERM (Batch stopping the job, a Spot reclaim) is passed to the
running stage, which saves what it can; a retried job skips what is done (caption: captions.json
covers the plan; train: resumes from the newest state).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

COMMANDS = {
    "caption": ["captioner", "run"],
    "train": ["trainer", "train"],
    "evaluate": ["trainer", "evaluate"],
}


def run(stages: list[str]) -> int:
    for stage in stages:
        proc = subprocess.Popen([sys.executable, "-m", *COMMANDS[stage]])
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame, proc=proc: proc.send_signal(signum))
        try:
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if rc != 0:
            print(
                f"avatar_job: {stage} exited with {rc}; not running {', '.join(stages[stages.index(stage) + 1 :]) or 'anything else'}",
                file=sys.stderr,
                flush=True,
            )
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avatar_job", description="Runs pipeline stages in order, one process each.")
    parser.add_argument("stages", nargs="+", choices=list(COMMANDS), metavar="{" + ",".join(COMMANDS) + "}")
    args = parser.parse_args(argv)
    if len(set(args.stages)) != len(args.stages):
        parser.error("each stage at most once")
    return run(args.stages)


if __name__ == "__main__":
    sys.exit(main())
