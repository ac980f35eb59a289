"""The metric code on constructed embeddings and images, where a tiny random CLIP cannot say anything,
and the production loader on a tiny random CLIP saved like the real one."""

import json

import numpy as np
import pytest
from PIL import Image

from avatar_job import StageError
from conftest import REPO
from tiny_clip import save_tiny_clip
from trainer import evaluate, prompt_sets, scores

FIXTURE = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())


def unit(angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def test_cosine_adherence_and_likeness_on_known_angles():
    # Vectors at known angles: cos 0 = 1, cos 60 = 0.5, cos 90 = 0, cos 180 = -1; length does not matter.
    images = np.stack([unit(0) * 3, unit(60) * 0.2, unit(90)])
    texts = np.stack([unit(0), unit(0), unit(270)])
    assert scores.adherence(images, texts) == pytest.approx([1.0, 0.5, -1.0])
    photos = np.stack([unit(0), unit(120)])
    assert scores.cosine(images, photos) == pytest.approx(np.array([[1, -0.5], [0.5, 0.5], [0, np.cos(np.radians(30))]]))
    # Likeness is the mean over the photos.
    assert scores.likeness(images, photos) == pytest.approx([0.25, 0.5, np.cos(np.radians(30)) / 2])
    assert scores.normalize(np.zeros((1, 3))) == pytest.approx(np.zeros((1, 3)))  # no division by zero


def test_black_uniform_and_fine_images():
    rng = np.random.default_rng(0)
    assert scores.broken_pixels(np.zeros((64, 64, 3), np.uint8)) == ["black", "uniform"]
    assert scores.broken_pixels(np.full((64, 64, 3), 250, np.uint8)) == ["uniform"]
    grey = np.full((64, 64, 3), 128, np.uint8) + rng.integers(0, 3, (64, 64, 3)).astype(np.uint8)
    assert scores.broken_pixels(grey) == ["uniform"]  # near-uniform: std ~0.8
    dark_scene = rng.integers(0, 18, (64, 64, 3)).astype(np.uint8)
    assert scores.broken_pixels(dark_scene) == ["black"]  # mean ~8.5 but not uniform
    assert scores.broken_pixels(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)) == []


def test_near_copy_needs_the_same_content_and_layout_in_one_photo():
    # Photo 0 passes CLIP only, photo 1 pixels only: not a copy. Photo 2 both: a copy.
    assert not scores.near_copy(np.array([0.99, 0.5]), np.array([0.1, 0.95]))
    assert scores.near_copy(np.array([0.99, 0.5, 0.96]), np.array([0.1, 0.95, 0.86]))
    assert not scores.near_copy(np.array([scores.NEAR_COPY_CLIP - 1e-3]), np.array([1.0]))
    # Thumbnail correlation: 1 for the same picture at another size and brightness, ~0 for an unrelated one.
    rng = np.random.default_rng(1)
    a = Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).resize((256, 256), Image.NEAREST)
    brighter = Image.fromarray((np.asarray(a.resize((300, 300))) * 0.8 + 30).astype(np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (256, 256, 3)).astype(np.uint8))
    assert scores.thumbnail(a) @ scores.thumbnail(brighter) > 0.97
    assert abs(scores.thumbnail(a) @ scores.thumbnail(other)) < 0.3


def test_center_square_crops_the_middle():
    im = Image.new("RGB", (200, 100))
    box = scores.center_square(im, 0.6)
    assert box.size == (60, 60)
    im.paste((255, 0, 0), (70, 20, 130, 80))  # exactly the central 60x60
    assert np.asarray(scores.center_square(im, 0.6)).reshape(-1, 3).tolist() == [[255, 0, 0]] * 3600


def test_the_scorer_loads_the_baked_layout_and_scores_each_image(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_CLIP_MODEL_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(StageError) as e:
        scores.Scorer()
    assert e.value.code == "CLIP_MODEL_MISSING"

    scorer = scores.Scorer(str(save_tiny_clip(tmp_path / "clip")))
    rng = np.random.default_rng(2)
    photos = [Image.fromarray(rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)) for _ in range(3)]
    ref = scorer.photos(photos, "character")
    assert ref.whole.shape == ref.subject.shape == (3, 16) and ref.thumbs.shape == (3, 1024)
    assert np.linalg.norm(ref.whole, axis=1) == pytest.approx(np.ones(3))
    images = [np.zeros((64, 64, 3), np.uint8), np.asarray(photos[0].resize((64, 64))), rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)]
    out = scorer.score(images, ["a red hat", "a photo", "a b c"], ref, "character", nan=[False, False, True])
    assert [o["broken"] for o in out] == [["black", "uniform"], ["nearCopy"], ["nan"]]
    assert out[1]["maxTrainingSimilarity"] > 0.99
    # The numbers are the metric functions applied to the model's embeddings.
    emb = scorer.images([Image.fromarray(images[2])])
    assert out[2]["adherence"] == pytest.approx(float(scores.adherence(emb, scorer.texts(["a b c"]))[0]), abs=1e-4)
    crop = scorer.images([scores.center_square(Image.fromarray(images[2]), scores.SUBJECT_CROP)])
    assert out[2]["likeness"] == pytest.approx(float(scores.likeness(crop, ref.subject)[0]), abs=1e-4)
    # Objects and styles compare whole images.
    whole = scorer.score([images[2]], ["a b c"], scorer.photos(photos, "style"), "style")[0]
    assert whole["likeness"] == pytest.approx(float(scores.likeness(emb, ref.whole)[0]), abs=1e-4)


def test_pack_prompts_per_kind_and_per_job():
    plan = json.loads(json.dumps(FIXTURE))
    spec = plan["spec"]
    character = prompt_sets.pack_prompts(spec)
    assert len(character) == 8 and all("anantn" in p and "{" not in p for p in character)
    for words in (
        "steampunk military uniform",
        "jester in a Swiss town",
        "ramen shop",
        "astronaut suit",
        "oil painting",
        "watercolour",
        "anime",
        "cyberpunk",
    ):
        assert any(words in p for p in character), words
    assert prompt_sets.pack_seeds(spec) == [1234, 1235]
    for kind in ("object", "style"):
        spec["kind"] = kind
        assert prompt_sets.pack_prompts(spec) == [prompt_sets.fill(t, spec) for t in prompt_sets.DEFAULTS[kind]]
        assert prompt_sets.pack_prompts(spec) != character
    spec["evaluation"].update(packPrompts=["{token} the {classWord} on a horse <lora:x:0.8>"], packSeeds=3)
    assert prompt_sets.pack_prompts(spec) == ["anantn the man on a horse"]
    assert prompt_sets.pack_seeds(spec) == [1234, 1235, 1236]
    # The contract accepts the override fields (the plan is validated against the generated schema).
    from avatar_job import validate

    validate("DatasetPlan", plan, "normalize/plan.json")
    plan["spec"]["evaluation"]["packSeeds"] = 9
    with pytest.raises(StageError):
        validate("DatasetPlan", plan, "normalize/plan.json")
    assert evaluate.prompts(plan) == ["a portrait of anantn, red hair, handsome face, oil painting, artstation"]
