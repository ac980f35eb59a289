"""`python -m trainer evaluate` end to end against S3 on moto_server, with a tiny SD1.5-shaped pipeline
and a tiny random CLIP as the scoring model.

The checkpoints are real kohya-format LoRA files for that pipeline. The final epoch's file is the
first epoch's with lora_up doubled, so (epoch 1, strength 1.0) and (final, strength 0.5) apply the
same LoRA delta: their renders must match, which shows the strength is a multiplier on the LoRA.
Two grid cells are planted (the renderer's output replaced, as a tiny model cannot be made to render
them on purpose): a black image and a near-copy of a training photo; both must be flagged broken.
"""

import hashlib
import html
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import jsonschema
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

import avatar_job as job_module
from avatar_job import Job, StageError, run_stage
from conftest import REPO, status_doc
from tiny_clip import save_tiny_clip
from tiny_sd import build_pipeline, kohya_lora
from trainer import evaluate, prompt_sets, recommend, render
from trainer.__main__ import main as trainer_main

FIXTURE = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
SCHEMA = json.loads((REPO / "containers/common/src/avatar_job/contract.schema.json").read_text())
PREFIX = "teams/team-a/jobs/recipe-25/"
EPOCHS = 2
STRENGTHS = [1.0, 0.5, 0.25, 0.0]  # 0.25: the planted cells, so the strength checks below use clean ones
SIZE = 256  # the contract's smallest width/height
NAMES = ["anantn-000001.safetensors", "anantn.safetensors"]
PHOTOS = ["p01.png", "p02.png", "p03.png", "p04.png"]
FOLDER = "15_anantn"
PLANTED = {4: "black", 8: "nearCopy"}  # render call number (1: base; then each checkpoint's strengths) -> what


def small_plan():
    plan = json.loads(json.dumps(FIXTURE))
    plan["plan"].update(epochs=EPOCHS, totalSteps=2 * 4 * 15, numImages=len(PHOTOS), folder=FOLDER)
    plan["images"] = PHOTOS
    plan["spec"]["evaluation"].update(
        strengths=STRENGTHS,
        steps=2,
        width=SIZE,
        height=SIZE,
        seed=7,
        packSeeds=1,
        prompts=["a portrait of {token}, a {classWord}, red hair <lora:last:1.0>"],
    )
    return plan


def photo(i: int) -> Image.Image:
    """A training photo stand-in: coloured shapes on a background, different for each i."""
    from PIL import ImageDraw

    rng = np.random.default_rng(i)
    im = Image.new("RGB", (320, 320), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.integers(0, 240, 2)
        draw.ellipse((x, y, x + rng.integers(30, 140), y + rng.integers(30, 140)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def near_copy(image: Image.Image) -> np.ndarray:
    """The photo as a LoRA that memorised it would render it: resized, slightly noisy."""
    pixels = np.asarray(image.resize((SIZE, SIZE))).astype(np.int16) + np.random.default_rng(3).integers(-10, 11, (SIZE, SIZE, 3))
    return pixels.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The pipeline folder, the CLIP folder and one LoRA file per checkpoint (built once: it costs a few seconds)."""
    root = tmp_path_factory.mktemp("tiny-sd")
    folder = build_pipeline(root / "pipeline")
    save_tiny_clip(root / "clip")
    files = {}
    for epoch, name in enumerate(NAMES, start=1):
        files[name] = root / name
        save_file(
            kohya_lora(folder, seed=1, up_scale=0.25 * epoch),
            str(files[name]),
            metadata={"ss_network_dim": "4", "ss_network_alpha": "2", "ss_epoch": str(epoch)},
        )
    return folder, files


@pytest.fixture
def seeded(job_env, tiny, tmp_path):
    folder, files = tiny
    s3, bucket = boto3.client("s3"), job_env["AVATAR_ARTIFACTS_BUCKET"]
    s3.put_object(Bucket=bucket, Key=PREFIX + "normalize/plan.json", Body=json.dumps(small_plan()))
    s3.put_object(
        Bucket=bucket,
        Key=PREFIX + "status.json",
        Body=json.dumps(status_doc("train")),
    )
    for name, path in files.items():
        s3.upload_file(str(path), bucket, PREFIX + f"train/{name}")
    for i, name in enumerate(PHOTOS):
        buf = io.BytesIO()
        photo(i).save(buf, "PNG")
        s3.put_object(Bucket=bucket, Key=PREFIX + f"normalize/{FOLDER}/{name}", Body=buf.getvalue())
    # What the report shows from earlier stages.
    buf = io.BytesIO()
    render.contact_sheet([photo(i) for i in range(len(PHOTOS))], PHOTOS, 4, 128).save(buf, "PNG")
    s3.put_object(Bucket=bucket, Key=PREFIX + "validate/contact-sheet.png", Body=buf.getvalue())
    s3.put_object(
        Bucket=bucket,
        Key=PREFIX + "caption/captions.json",
        Body=json.dumps({"captions": [{"image": n, "caption": f"photo of anantn, a man <b>{n}</b>", "source": "blip"} for n in PHOTOS]}),
    )
    s3.put_object(
        Bucket=bucket,
        Key=PREFIX + "train/diary.json",
        Body=json.dumps(
            {
                "startedAt": "2026-01-01T00:05:00.000Z",
                "finishedAt": "2026-01-01T00:35:00.000Z",
                "attempts": [{"startedAt": "2026-01-01T00:05:00.000Z"}],
                "lossPerEpoch": {"1": 0.12, "2": 0.1},
            }
        ),
    )
    env = {
        **os.environ,
        **job_env,
        "AVATAR_EVAL_PIPELINE_DIR": str(folder),
        "AVATAR_WORK_DIR": str(tmp_path / "work"),
        "AVATAR_CLIP_MODEL_DIR": str(folder.parent / "clip"),
    }
    return s3, bucket, env


def _evaluate(env):
    return subprocess.run([sys.executable, "-m", "trainer", "evaluate"], capture_output=True, text=True, timeout=240, env=env)


def _get(s3, bucket, rel):
    return s3.get_object(Bucket=bucket, Key=PREFIX + rel)["Body"].read()


def _keys(s3, bucket, sub):
    return sorted(o["Key"][len(PREFIX) :] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + sub).get("Contents", []))


def _status(s3, bucket):
    status = json.loads(_get(s3, bucket, "status.json"))
    jsonschema.validate(status, {"$ref": "#/$defs/Status", "$defs": SCHEMA["$defs"]})
    return status


def _pixels(s3, bucket, rel):
    return np.asarray(Image.open(io.BytesIO(_get(s3, bucket, rel))).convert("RGB")).astype(np.int16)


def test_evaluate_renders_the_grid_scores_every_cell_recommends_and_renders_the_pack(seeded, monkeypatch):
    s3, bucket, env = seeded
    # In this process (`python -m trainer evaluate`'s main), so torch and diffusers are imported once
    # per test session; the failure test below runs the real subprocess. Every status write is kept.
    for k in ("AVATAR_EVAL_PIPELINE_DIR", "AVATAR_WORK_DIR", "AVATAR_CLIP_MODEL_DIR"):
        monkeypatch.setenv(k, env[k])
    writes = []
    monkeypatch.setattr(job_module, "STATUS_THROTTLE_S", 0.0)
    real_write = job_module.Status._write
    monkeypatch.setattr(job_module.Status, "_write", lambda self, doc: (writes.append(doc), real_write(self, doc)))
    calls = {"n": 0}
    real_render = evaluate.Renderer.__call__

    def planted(self, prompt, seed=None):
        calls["n"] += 1
        what = PLANTED.get(calls["n"])
        if what == "black":
            return np.zeros((SIZE, SIZE, 3), np.uint8), False
        if what == "nearCopy":
            return near_copy(photo(1)), False
        return real_render(self, prompt, seed)

    monkeypatch.setattr(evaluate.Renderer, "__call__", planted)
    assert trainer_main(["evaluate"]) == 0

    # Only evaluate/ is written (plus status.json); train/ is untouched.
    cells_png = [f"evaluate/cells/anantn-e{e}-s{s:.2f}.png" for e in (1, 2) for s in STRENGTHS]
    pack_png = [f"evaluate/pack/anantn-{n:02d}-seed7.png" for n in range(1, 9)]
    assert _keys(s3, bucket, "evaluate/") == sorted(
        [
            "evaluate/base.png",
            "evaluate/grid.png",
            "evaluate/scores.json",
            "evaluate/pack.png",
            "evaluate/report.html",
            *cells_png,
            *pack_png,
        ]
    )
    assert _keys(s3, bucket, "train/") == sorted(f"train/{n}" for n in NAMES + ["diary.json"])

    scores = json.loads(_get(s3, bucket, "evaluate/scores.json"))
    assert "0 means no effect" in scores["metrics"]["meanAbsDiffFromBase"]
    assert "openai/clip-vit-base-patch32 (MIT licence)" in scores["metrics"]["adherence"]
    assert {"adherence", "likeness", "maxTrainingSimilarity", "broken"} <= set(scores["metrics"])
    assert scores["prompts"] == ["a portrait of anantn, a man, red hair"]
    assert scores["trainingPhotos"] == len(PHOTOS)
    assert [c["name"] for c in scores["checkpoints"]] == NAMES
    cells = {(c["checkpoint"], c["strength"]): c for c in scores["cells"]}
    assert sorted(cells) == sorted((n, s) for n in NAMES for s in STRENGTHS) and len(scores["cells"]) == 8
    for (name, s), c in cells.items():
        assert c["seed"] == 7 and c["prompt"] == scores["prompts"][0]
        assert c["image"] == f"evaluate/cells/anantn-e{NAMES.index(name) + 1}-s{s:.2f}.png"
        assert c["epoch"] == NAMES.index(name) + 1 and c["final"] == (name == "anantn.safetensors")
        # Every cell is scored, with finite numbers in range.
        assert -1 <= c["adherence"] <= 1 and -1 <= c["likeness"] <= 1 and -1 <= c["maxTrainingSimilarity"] <= 1.0001, c
    # The planted cells, and only they, are broken.
    assert cells[NAMES[0], 0.25]["broken"] == ["black", "uniform"]
    assert cells[NAMES[1], 0.25]["broken"] == ["nearCopy"] and cells[NAMES[1], 0.25]["maxTrainingSimilarity"] > 0.95
    assert [k for k, c in cells.items() if c["broken"]] == [(NAMES[0], 0.25), (NAMES[1], 0.25)]
    assert np.array_equal(_pixels(s3, bucket, cells[NAMES[0], 0.25]["image"]), np.zeros((SIZE, SIZE, 3)))

    diff = {k: c["meanAbsDiffFromBase"] for k, c in cells.items()}
    base = _pixels(s3, bucket, "evaluate/base.png")
    for name in NAMES:
        # Strength 0 is the base model exactly; the effect grows with strength.
        assert diff[name, 0.0] == 0.0
        assert np.array_equal(_pixels(s3, bucket, cells[name, 0.0]["image"]), base)
        assert diff[name, 1.0] > diff[name, 0.5] > 1.0, diff
    # The later (stronger) checkpoint acts more at the same strength ...
    assert diff["anantn.safetensors", 1.0] > diff["anantn-000001.safetensors", 1.0]
    # ... and strength multiplies the LoRA delta: half of the doubled LoRA renders as the original.
    same = np.abs(_pixels(s3, bucket, "evaluate/cells/anantn-e1-s1.00.png") - _pixels(s3, bucket, "evaluate/cells/anantn-e2-s0.50.png"))
    assert same.mean() < 0.5, same.mean()
    mine = np.abs(_pixels(s3, bucket, cells[NAMES[1], 1.0]["image"]) - base).mean()
    assert diff[NAMES[1], 1.0] == pytest.approx(mine, abs=1e-3)

    # The recommendation: the documented rule applied to the recorded pairs, never a broken one.
    rec = scores["recommendation"]
    assert len(scores["pairs"]) == 8
    assert {k: v for k, v in rec.items()} == recommend.recommend(scores["pairs"], EPOCHS)
    assert not cells[rec["checkpoint"], rec["strength"]]["broken"] and rec["strength"] > 0
    assert rec["tag"] == f"<lora:{rec['checkpoint'].removesuffix('.safetensors')}:{recommend.strength_text(rec['strength'])}>"
    # (The runner-up is checked by the equality above; when there is one it is another pair.)
    assert rec["runnerUp"] is None or (rec["runnerUp"]["checkpoint"], rec["runnerUp"]["strength"]) != (rec["checkpoint"], rec["strength"])
    assert rec["rule"] == recommend.RULE and rec["reason"]

    # The grid: checkpoints across (final last), strengths down, the recommended cell outlined.
    left, top = render.margins(SIZE)
    grid = Image.open(io.BytesIO(_get(s3, bucket, "evaluate/grid.png")))
    assert grid.size == (left + EPOCHS * SIZE, top + len(STRENGTHS) * SIZE)
    g = np.asarray(grid.convert("RGB")).astype(np.int16)
    chosen = (STRENGTHS.index(rec["strength"]), NAMES.index(rec["checkpoint"]))
    assert scores["grids"][0]["outlined"] == {"row": chosen[0], "column": chosen[1]}
    for row, s in enumerate(STRENGTHS):
        for col, epoch in enumerate((1, 2)):
            cell = g[top + row * SIZE : top + (row + 1) * SIZE, left + col * SIZE : left + (col + 1) * SIZE]
            own = _pixels(s3, bucket, f"evaluate/cells/anantn-e{epoch}-s{s:.2f}.png")
            if (row, col) == chosen:
                assert (cell[:3] == render.OUTLINE).all() and (cell[:, -3:] == render.OUTLINE).all()
                assert np.array_equal(cell[8:-8, 8:-8], own[8:-8, 8:-8])
            else:
                assert np.array_equal(cell, own), (row, col)
    assert (g[:top, :left] == 255).all() and (g[:top, left:] < 128).any() and (g[top:, :left] < 128).any(), "labels are drawn"

    # The avatar pack: every prompt of the character set at the recommended checkpoint and strength.
    pack = scores["pack"]
    assert (pack["checkpoint"], pack["strength"], pack["tag"], pack["seeds"]) == (rec["checkpoint"], rec["strength"], rec["tag"], [7])
    assert pack["prompts"] == [prompt_sets.fill(t, small_plan()["spec"]) for t in prompt_sets.CHARACTER]
    assert [p["image"] for p in pack["images"]] == pack_png
    renders = [_pixels(s3, bucket, rel) for rel in pack_png]
    assert all(r.shape == (SIZE, SIZE, 3) and r.std() > 5 for r in renders)
    assert len({r.tobytes() for r in renders}) == 8, "each prompt renders its own image"
    assert all("adherence" in p and "likeness" in p and p["broken"] == [] for p in pack["images"])
    sheet = Image.open(io.BytesIO(_get(s3, bucket, "evaluate/pack.png")))
    assert sheet.width == 2 * 256 and sheet.height == 4 * (256 + 2 * render.font_size(256))  # 8 images, 2 a row
    first = np.asarray(sheet.convert("RGB"))[:256, :256].astype(np.int16)
    assert np.abs(first - np.asarray(Image.fromarray(renders[0].astype(np.uint8)).resize((256, 256))).astype(np.int16)).mean() < 1

    # The report: the pack, the grid and the intake sheet inline; captions escaped; the loss plot; stage times.
    page = _get(s3, bucket, "evaluate/report.html").decode()
    assert page.count('src="data:image/png;base64,') == 3 and "<svg" in page and 'aria-label="loss per epoch"' in page
    assert html.escape(rec["tag"]) in page and "photo of anantn, a man &lt;b&gt;p01.png&lt;/b&gt;" in page
    assert "30m 00s" in page  # train, from the diary
    assert s3.head_object(Bucket=bucket, Key=PREFIX + "evaluate/report.html")["ContentType"].startswith("text/html")

    status = _status(s3, bucket)
    assert (status["state"], status["stage"], status["progress"]["fraction"]) == ("running", "evaluate", 1.0)
    assert rec["tag"] in status["progress"]["message"]
    assert status["createdAt"] == "2026-01-01T00:00:00.000Z" and "finishedAt" not in status
    # Progress after every rendered image: the base render, each cell, each pack image.
    assert all((w["state"], w["stage"]) == ("running", "evaluate") for w in writes)
    rendered = [w["progress"] for w in writes if w["progress"]["message"].startswith("rendered ")]
    assert [p["message"].split()[1] for p in rendered] == [f"{i}/17" for i in range(1, 18)]
    fractions = [p["fraction"] for p in rendered]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert [p.get("epoch") for p in rendered] == [None] + [1] * 4 + [2] * 4 + [rec["epoch"]] * 8

    # A rerun with the same seed renders identical images and recommends the same.
    first = {rel: _get(s3, bucket, rel) for rel in cells_png + pack_png + ["evaluate/grid.png", "evaluate/base.png"]}
    calls["n"] = 0
    assert run_stage("evaluate", evaluate.evaluate_stage) == 0
    for rel, body in first.items():
        assert np.array_equal(_pixels(s3, bucket, rel), np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))), rel
    assert json.loads(_get(s3, bucket, "evaluate/scores.json"))["recommendation"] == rec


def test_an_all_broken_grid_fails_with_no_usable_checkpoint_and_keeps_its_scores(seeded, monkeypatch):
    s3, bucket, env = seeded
    for k in ("AVATAR_EVAL_PIPELINE_DIR", "AVATAR_WORK_DIR", "AVATAR_CLIP_MODEL_DIR"):
        monkeypatch.setenv(k, env[k])
    # Every render black, as a diverged LoRA renders them (planted: the tiny model cannot be made to).
    monkeypatch.setattr(evaluate.Renderer, "__call__", lambda self, prompt, seed=None: (np.zeros((SIZE, SIZE, 3), np.uint8), False))
    assert trainer_main(["evaluate"]) == 1
    status = _status(s3, bucket)
    assert (status["state"], status["error"]["code"]) == ("failed", "NO_USABLE_CHECKPOINT")
    assert "black, uniform" in status["error"]["message"] and status["error"]["input"] == "evaluate/scores.json"
    scores = json.loads(_get(s3, bucket, "evaluate/scores.json"))
    assert scores["recommendation"] is None and len(scores["pairs"]) == 8 and all(p["broken"] for p in scores["pairs"])
    # Nothing is recommended, so no grid outline, pack or report is written.
    assert not [k for k in _keys(s3, bucket, "evaluate/") if k.startswith(("evaluate/pack", "evaluate/grid", "evaluate/report"))]


def test_a_missing_checkpoint_fails_before_rendering(seeded):
    s3, bucket, env = seeded
    s3.delete_object(Bucket=bucket, Key=PREFIX + "train/anantn-000001.safetensors")
    result = _evaluate(env)
    assert result.returncode == 1
    status = _status(s3, bucket)
    assert (status["state"], status["stage"]) == ("failed", "evaluate")
    assert status["error"]["code"] == "MISSING_CHECKPOINT"
    assert status["error"]["input"] == "train/anantn-000001.safetensors"
    assert "anantn-000001.safetensors" in result.stderr
    assert _keys(s3, bucket, "evaluate/") == []


def test_a_corrupt_checkpoint_fails_with_its_code(seeded):
    s3, bucket, env = seeded
    # The train stage records each file's sha256; a different body under that name is caught.
    s3.put_object(Bucket=bucket, Key=PREFIX + "train/anantn.safetensors", Body=b"not a checkpoint", Metadata={"sha256": "0" * 64})
    job = Job.from_env()
    ckpt = evaluate.checkpoints(small_plan())[-1]
    head = evaluate.head_checkpoints(job, [ckpt])[ckpt.name]
    with pytest.raises(StageError) as e:
        evaluate.download_checkpoint(job, ckpt, head, Path(env["AVATAR_WORK_DIR"]))
    assert e.value.code == "CHECKPOINT_CORRUPT"
    s3.put_object(Bucket=bucket, Key=PREFIX + "train/anantn.safetensors", Body=b"not a checkpoint")
    head = evaluate.head_checkpoints(job, [ckpt])[ckpt.name]
    with pytest.raises(StageError) as e:
        evaluate.download_checkpoint(job, ckpt, head, Path(env["AVATAR_WORK_DIR"]))
    assert e.value.code == "CHECKPOINT_INVALID"


def test_checkpoint_names_prompts_and_file_names_come_from_the_plan():
    plan = json.loads(json.dumps(FIXTURE))
    names = [(c.name, c.epoch, c.final) for c in evaluate.checkpoints(plan)]
    assert names == [(f"anantn-00000{e}.safetensors", e, False) for e in range(1, 5)] + [("anantn.safetensors", 5, True)]
    plan["spec"]["evaluation"]["prompts"] = ["{token} the {classWord}, <lora:anantn:0.8>", "photo of {token}"]
    assert evaluate.prompts(plan) == ["anantn the man", "photo of anantn"]
    final = evaluate.checkpoints(plan)[-1]
    assert evaluate.cell_rel("anantn", final, 0.7, 1, 2) == "evaluate/cells/anantn-e5-s0.70-p1.png"
    assert evaluate.cell_rel("anantn", final, 1, 0, 1) == "evaluate/cells/anantn-e5-s1.00.png"
    assert evaluate.numbered("evaluate/grid.png", 1, 2) == "evaluate/grid-1.png"
    assert evaluate.numbered("evaluate/grid.png", 0, 1) == "evaluate/grid.png"


def test_grid_layout_places_each_cell_under_its_labels():
    colours = [[(10 * r + c, 100, 200) for c in range(3)] for r in range(2)]
    cells = [[Image.new("RGB", (64, 48), colours[r][c]) for c in range(3)] for r in range(2)]
    out = render.grid(
        cells, ["a-000001 (e1)", "a-000002 (e2)", "a (e3) with a label far too long to fit"], ["strength 1.00", "strength 0.50"]
    )
    left, top = render.margins(64)
    assert out.size == (left + 3 * 64, top + 2 * 48)
    for r in range(2):
        for c in range(3):
            assert out.getpixel((left + c * 64 + 32, top + r * 48 + 24)) == colours[r][c]
    # Row labels fit their margin whole at every cell size; an over-long column label is shortened.
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(out)
    for width in (256, 512, 1024):
        size = render.font_size(width)
        font = ImageFont.load_default(size=size)
        assert render._fit(draw, "strength 0.75", font, render.margins(width)[0] - size // 2) == "strength 0.75"
    assert render._fit(draw, "a (e3) with a label far too long to fit", ImageFont.load_default(size=12), 52).endswith("...")


def test_the_production_loader_reads_the_single_file_checkpoint_with_the_baked_config(job_env, tiny, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    folder, _ = tiny
    monkeypatch.delenv("AVATAR_EVAL_PIPELINE_DIR", raising=False)
    monkeypatch.setenv("AVATAR_SD_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(StageError) as e:
        evaluate.load_pipeline(Job.from_env())
    assert e.value.code == "SD_CONFIG_MISSING"

    # With the config in place: the base model comes through train's verified cache, and
    # from_single_file gets the baked config and may not reach the hub.
    monkeypatch.setenv("AVATAR_SD_CONFIG_DIR", str(folder))
    monkeypatch.setenv("AVATAR_BASE_MODEL_KEY", "models/sd15.safetensors")
    boto3.client("s3").put_object(
        Bucket=job_env["AVATAR_ARTIFACTS_BUCKET"],
        Key="models/sd15.safetensors",
        Body=b"weights",
        Metadata={"sha256": hashlib.sha256(b"weights").hexdigest()},
    )
    calls = []

    def fake_single_file(path, **kwargs):
        calls.append((path, kwargs))
        return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", staticmethod(fake_single_file))
    pipe, source = evaluate.load_pipeline(Job.from_env())
    ((path, kwargs),) = calls
    assert Path(path).read_bytes() == b"weights" and path.startswith(job_env["AVATAR_CACHE_DIR"])
    assert kwargs["config"] == str(folder) and kwargs["local_files_only"] is True and kwargs["safety_checker"] is None
    assert source["key"] == "models/sd15.safetensors" and source["device"] == "cpu" and source["dtype"] == "float32"


def test_the_image_bakes_the_sd15_configs_without_weights():
    text = (REPO / "containers/trainer/Dockerfile").read_text()
    assert "ARG SD15_CONFIG_REVISION=451f4fe16113bff5a5d2269ed5ad43b0592e9a14" in text
    assert "snapshot_download('stable-diffusion-v1-5/stable-diffusion-v1-5', revision='$SD15_CONFIG_REVISION'" in text
    assert "allow_patterns=['*.json', 'tokenizer/merges.txt']" in text
    assert f"AVATAR_SD_CONFIG_DIR={evaluate.DEFAULT_SD_CONFIG_DIR} " in text
    # Baked before HF_HUB_OFFLINE applies, and before the code layer.
    assert text.index("snapshot_download") < text.index("HF_HUB_OFFLINE=1") < text.index("COPY trainer/src")


def test_the_image_bakes_the_clip_scoring_model_at_a_pinned_revision():
    from trainer import scores

    text = (REPO / "containers/trainer/Dockerfile").read_text()
    assert "ARG CLIP_REVISION=3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268" in text
    assert f"get('{scores.CLIP_MODEL}', revision=r" in text and "r = '$CLIP_REVISION'" in text
    assert f"AVATAR_CLIP_MODEL_DIR={scores.DEFAULT_CLIP_DIR} " in text and f"local_dir='{scores.DEFAULT_CLIP_DIR}'" not in text
    assert f"d = '{scores.DEFAULT_CLIP_DIR}'" in text
    # Baked before HF_HUB_OFFLINE applies, and before the code layer; the build loads it offline once.
    assert text.index("CLIP_REVISION") < text.index("HF_HUB_OFFLINE=1") < text.index("COPY trainer/src")
    assert "CLIPModel.from_pretrained(d, local_files_only=True)" in text
