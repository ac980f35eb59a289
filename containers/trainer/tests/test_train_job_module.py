from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_job_module_is_identical_in_both_images():
    # Each image builds from its own folder, so the shared runtime contract is kept as two copies.
    trainer = (HERE.parent / "src/trainer/job.py").read_bytes()
    captioner = (HERE.parents[1] / "captioner/src/captioner/job.py").read_bytes()
    assert trainer == captioner
