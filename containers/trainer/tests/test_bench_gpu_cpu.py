"""bench/gpu's CPU mode, so the GPU benchmark cannot rot between GPU runs: the same script, tiny model, kohya stand-in."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO


def test_bench_gpu_cpu_mode_runs_train_and_evaluate_and_projects_the_recipe(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AVATAR_"))}
    result = subprocess.run(
        ["bash", str(REPO / "bench/gpu/run.sh"), "--cpu", "--steps", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**env, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "the stand-in containers/trainer/tests/fake_kohya.py (no --sd-scripts given)" in out
    assert "projected recipe training at 512 batch 1: 1875 steps" in out
    assert re.search(r"projected recipe evaluation: \d+ renders x 35 steps|projected recipe evaluation: \d+ renders x 2 steps", out)

    results = json.loads((tmp_path / "results.json").read_text())
    train = {r["config"]: r for r in results["train"]}
    assert set(train) == {"512px batch 1", "512px batch 2"}
    for r in train.values():
        assert r["ok"] is True and r["steps"] == 2 and r["itPerS"] > 0
        # Both figures are rounded to 2 decimals from the same unrounded rate: equal within that rounding.
        assert abs(r["imagesPerS"] - r["itPerS"] * r["batch"]) <= 0.005 * (r["batch"] + 1) + 1e-9
        assert r["peakGpuGiB"] is None  # no GPU here: reported as n/a, never invented
    ev = results["evaluate"]
    # 1 prompt x (base + 2 checkpoints x 1 strength) for the grid, plus the avatar pack's renders.
    assert ev["ok"] is True and ev["renders"] >= 3 and ev["steps"] == 2 and ev["imagesPerS"] > 0
    assert results["meta"]["mode"] == "cpu"


def test_bench_gpu_rejects_what_it_cannot_measure():
    bench = [sys.executable, str(REPO / "bench/gpu/bench.py")]
    no_kohya = subprocess.run(bench, capture_output=True, text=True, timeout=120, env={**os.environ, "AVATAR_SD_SCRIPTS_DIR": ""})
    assert no_kohya.returncode == 2 and "needs --sd-scripts" in no_kohya.stderr
    bad = subprocess.run([*bench, "--cpu", "--configs", "640x1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "640x1 is not one of 512/768 x 1/2" in bad.stderr
