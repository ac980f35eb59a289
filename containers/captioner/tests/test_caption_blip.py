import pytest
import torch
from PIL import Image

from captioner.blip import Blip, Settings
from tiny_blip import WORDS, save_tiny_blip


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return Blip(save_tiny_blip(tmp_path_factory.mktemp("blip")), device="cpu")


def _images(n):
    return [Image.new("RGB", (40 + 8 * i, 48), (30 * i, 100, 200)) for i in range(n)]


def _eager_to_stop(blip):
    """Biases the decoder towards end-of-caption, so only min_length keeps captions going."""
    sep = blip.model.config.text_config.sep_token_id
    with torch.no_grad():
        blip.model.text_decoder.cls.predictions.bias[sep] += 50.0
    return blip


def test_min_length_reaches_generate(tmp_path):
    blip = _eager_to_stop(Blip(save_tiny_blip(tmp_path / "blip"), device="cpu"))
    pad = blip.model.config.text_config.pad_token_id
    short = blip.generate_ids(_images(2), Settings(num_beams=3, min_length=1, max_length=20))
    long = blip.generate_ids(_images(2), Settings(num_beams=3, min_length=12, max_length=20))
    assert int((short != pad).sum(dim=1).max()) <= 3
    assert int((long != pad).sum(dim=1).min()) >= 12
    assert long.shape[1] <= 20


def test_num_beams_reaches_generate(blip, monkeypatch):
    seen = {}
    original = blip.model.generate

    def spy(*args, **kwargs):  # records the settings, then runs the real generate
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(blip.model, "generate", spy)
    greedy = blip.generate_ids(_images(1), Settings(num_beams=1, min_length=5, max_length=12))
    beams = blip.generate_ids(_images(1), Settings(num_beams=4, min_length=5, max_length=12))
    assert seen["num_beams"] == 4 and seen["min_length"] == 5 and seen["max_length"] == 12
    assert greedy.shape[0] == beams.shape[0] == 1


def test_captions_are_decoded_words_from_the_vocabulary(blip):
    captions = blip.caption(_images(3), Settings(num_beams=2, min_length=6, max_length=10, batch_size=2))
    assert len(captions) == 3
    for caption in captions:
        words = caption.split()
        assert len(words) >= 4
        assert set(words) <= set(WORDS)


def test_cpu_runs_in_float32(blip):
    assert blip.dtype == torch.float32
    assert next(blip.model.parameters()).dtype == torch.float32
