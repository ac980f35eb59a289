"""The evaluate stage. Not implemented yet: it fails loudly rather than report a success it did not earn."""
from __future__ import annotations

from .job import Job, StageError, Status


def evaluate_stage(job: Job, status: Status) -> None:
    checkpoints = [k for k in job.list("train/") if k.endswith(".safetensors") and k.count("/") == 1]
    if not checkpoints:
        raise StageError("MISSING_INPUT", "no checkpoints under train/; run the train stage first", "train/")
    raise StageError(
        "EVALUATE_NOT_IMPLEMENTED",
        f"the evaluation grid is not implemented in this trainer image yet; the {len(checkpoints)} checkpoints under "
        "train/ are valid and can be downloaded and tested by hand (recipe.md section 6)",
    )
