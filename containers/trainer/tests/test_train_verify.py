"""Checkpoint verification on real safetensors files."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from avatar_job import StageError
from trainer.verify import read_header, verify_checkpoint

UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def _lora(path, dim=8, alpha=4.0, modules=(UNET, TE), meta_alpha=None, parts=("lora_down.weight", "lora_up.weight", "alpha")):
    tensors = {}
    for m in modules:
        if "lora_down.weight" in parts:
            tensors[f"{m}.lora_down.weight"] = torch.randn(dim, 16)
        if "lora_up.weight" in parts:
            tensors[f"{m}.lora_up.weight"] = torch.zeros(16, dim)
        if "alpha" in parts:
            tensors[f"{m}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata={"ss_network_dim": str(dim), "ss_network_alpha": str(meta_alpha or alpha), "ss_epoch": "2"})
    return path


def _fails(path, dim=8, alpha=4.0):
    with pytest.raises(StageError) as e:
        verify_checkpoint(path, "lora", dim, alpha)
    assert e.value.code == "CHECKPOINT_INVALID" and e.value.input == path.name
    return e.value.message


def test_a_good_checkpoint_passes_with_its_module_counts(tmp_path):
    summary = verify_checkpoint(_lora(tmp_path / "a.safetensors"), "lora", 8, 4.0)
    assert summary == {"modules": 2, "unetModules": 1, "textEncoderModules": 1, "epoch": 2}


def test_wrong_dim_is_rejected(tmp_path):
    assert "dim 4, the plan says 8" in _fails(_lora(tmp_path / "a.safetensors", dim=4, alpha=4.0))


def test_wrong_alpha_is_rejected(tmp_path):
    assert "alpha 1, the plan says 4" in _fails(_lora(tmp_path / "a.safetensors", alpha=1.0))


def test_metadata_alpha_disagreeing_is_rejected(tmp_path):
    assert "ss_network_alpha" in _fails(_lora(tmp_path / "a.safetensors", meta_alpha=2.0))


def test_wrong_prefix_is_rejected(tmp_path):
    assert "is not under lora_unet_ or lora_te_" in _fails(_lora(tmp_path / "a.safetensors", modules=("unet_down_blocks_0",)))


def test_missing_part_is_rejected(tmp_path):
    assert "expected" in _fails(_lora(tmp_path / "a.safetensors", parts=("lora_down.weight", "alpha")))


def test_empty_file_is_rejected(tmp_path):
    save_file({}, str(tmp_path / "a.safetensors"))
    assert "no LoRA modules" in _fails(tmp_path / "a.safetensors")


def test_corrupt_header_is_rejected(tmp_path):
    path = _lora(tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    assert "header is not JSON" in _fails(path)


def test_truncated_file_is_rejected(tmp_path):
    path = _lora(tmp_path / "a.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    assert "points outside the file" in _fails(path)


def test_header_length_beyond_the_file_is_rejected(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + json.dumps({}).encode())
    with pytest.raises(StageError, match="exceeds the file"):
        read_header(path)
