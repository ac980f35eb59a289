"""Publishing what kohya has finished: verified checkpoints and the newest resume state.

kohya writes a state folder's train_state.json FIRST (accelerate's save pre-hook, `save_model_hook`
in train_network.py), then the weights, optimizer and RNG files; nothing in the folder says it is
finished. So a file or folder counts as finished only once kohya has moved past it (`proven`): a
later `epoch n/N` line, a later checkpoint or state in the output folder, or a clean exit. A
published state gets a manifest (file sizes and sha256, `layout.state_manifest`) written LAST, after
the upload is verified; only then are older states deleted, and resume only considers states with one.
"""

from __future__ import annotations

from pathlib import Path

from avatar_job import Job, StageError, layout, now

from .verify import sha256, verify_checkpoint


def write_rank(path: Path, output_name: str, epochs: int) -> tuple[int, int] | None:
    """(position in kohya's write order, epoch) of a checkpoint file or state folder, else None.

    Epoch k < N: checkpoint (2k-1), state folder (2k), then the "epoch k+1/N" line. After the last
    epoch N: the `-state` folder (2N-1), then the final checkpoint (2N). (train_network.py:
    save_model, then save_and_remove_state_on_epoch_end; at the end save_state_on_train_end, then
    save_model of the last checkpoint.)
    """
    if path.is_dir() and (e := layout.state_epoch(output_name, path.name, epochs)) is not None:
        return (2 * epochs - 1 if e == epochs else 2 * e), e
    if path.is_file() and (e := layout.checkpoint_epoch(output_name, path.name, epochs)) is not None:
        return 2 * e if e == epochs else 2 * e - 1, e
    return None


class Publisher:
    """Uploads from kohya's output folder what it has finished, and keeps the train diary."""

    def __init__(self, job: Job, plan: dict, output_dir: Path):
        self.job, self.output_dir = job, output_dir
        self.name = plan["outputName"]
        self.training = plan["spec"]["training"]
        self.epochs = plan["plan"]["epochs"]
        # Everything at or below this position in kohya's write order is finished (see write_rank).
        self.proven: float = 0
        # Checkpoint file names, and "state/<folder>" for states, already on S3.
        self.published: set[str] = set()
        self.state_epoch = 0  # of the newest complete state on S3
        self.diary: dict = {}

    def resumed_from(self, state: Path, epoch: int) -> None:
        """A state downloaded to resume from is on S3 already, and everything before it is finished."""
        self.published.add(f"state/{state.name}")
        self.state_epoch = epoch
        self.proven = write_rank(state, self.name, self.epochs)[0]

    def publish(self) -> None:
        """Uploads the checkpoints and the newest state folder that kohya has finished writing."""
        if not self.output_dir.is_dir():
            return
        found = sorted((r, path) for path in self.output_dir.iterdir() if (r := write_rank(path, self.name, self.epochs)))
        # What exists proves that everything kohya writes before it is finished.
        self.proven = max([self.proven, *(rank - 1 for (rank, _), _ in found)])
        done = [(epoch, path) for (rank, epoch), path in found if rank <= self.proven]
        for epoch, path in done:
            if path.is_file() and path.name not in self.published:
                self._publish_checkpoint(path, epoch)
        states = [(epoch, path) for epoch, path in done if path.is_dir()]
        # Only the newest finished state is worth uploading: resume never uses an older one.
        if states and f"state/{states[-1][1].name}" not in self.published:
            self._publish_state(states[-1][1], states[-1][0])

    def _publish_checkpoint(self, path: Path, epoch: int) -> None:
        summary = verify_checkpoint(path, self.training["network"], self.training["networkDim"], float(self.training["networkAlpha"]))
        digest = sha256(path)
        key = layout.final_model(self.name) if epoch == self.epochs else layout.checkpoint(self.name, epoch)
        self.job.s3.upload_file(str(path), self.job.artifacts_bucket, self.job.key(key), ExtraArgs={"Metadata": {"sha256": digest}})
        self.published.add(path.name)
        entry = {**summary, "name": path.name, "epoch": epoch, "sha256": digest, "size": path.stat().st_size}
        self.diary["checkpoints"] = [c for c in self.diary["checkpoints"] if c["name"] != path.name] + [entry]
        self.diary["checkpoints"].sort(key=lambda c: c["epoch"])
        print(f"train: published {path.name} (epoch {epoch}, {summary['modules']} modules, sha256 {digest[:12]})", flush=True)
        self.save_diary()

    def _publish_state(self, path: Path, epoch: int) -> None:
        prefix = layout.state_prefix(path.name)
        files = []
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            self.job.upload(f, prefix + rel)
            files.append({"path": rel, "size": f.stat().st_size, "sha256": sha256(f)})
        # Verified before anything older goes: every file is in the bucket at its size.
        landed = self.job.sizes(prefix)
        wrong = [f["path"] for f in files if landed.get(prefix + f["path"]) != f["size"]]
        if wrong:
            raise StageError(
                "STATE_UPLOAD_FAILED",
                f"{prefix}{wrong[0]} is missing or of the wrong size after its upload; retry the job",
                prefix + wrong[0],
            )
        self.job.put_json(layout.state_manifest(path.name), {"state": path.name, "epoch": epoch, "files": files, "uploadedAt": now()})
        # Now the older states (and any whose upload a kill cut short) are superseded.
        for rel in self.job.list(layout.TRAIN_STATE):
            if not rel.startswith(prefix):
                self.job.s3.delete_object(Bucket=self.job.artifacts_bucket, Key=self.job.key(rel))
        self.published.add(f"state/{path.name}")
        self.state_epoch = epoch
        self.diary["state"] = path.name
        print(f"train: uploaded resume state {path.name} ({len(files)} files, verified)", flush=True)
        self.save_diary()

    def save_diary(self) -> None:
        self.diary["updatedAt"] = now()
        self.job.put_json(layout.DIARY, self.diary)
