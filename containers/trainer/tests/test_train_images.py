"""The Dockerfiles cannot be built here (no Docker engine): these checks keep them in step with the locks."""

import re
from pathlib import Path

import pytest

CONTAINERS = Path(__file__).resolve().parents[2]


def _lock(name):
    pins = {}
    for line in (CONTAINERS / name / "requirements.txt").read_text().splitlines():
        if m := re.match(r"^([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)", line):
            pins[m[1]] = m[2]
    return pins


@pytest.mark.parametrize("name", ["trainer"])
def test_dockerfile_installs_the_hashed_lock_then_code_then_self_test(name):
    text = (CONTAINERS / name / "Dockerfile").read_text()
    assert "--require-hashes -r /tmp/requirements.txt" in text
    order = [
        text.index(s)
        for s in (f"COPY {name}/requirements.txt", "--require-hashes", "COPY common/src", f"COPY {name}/src", f"python -m {name} self-test")
    ]
    assert order == sorted(order)
    assert re.search(r"^USER (?!root)\w+$", text, re.M)
    # Every "package version" named in the Dockerfile's comments is the locked version.
    lock = _lock(name)
    named = re.findall(r"\b(torch|xformers|transformers|diffusers|accelerate) (\d+\.\d+\.\d+(?:\.post\d+)?)", text)
    assert named
    for package, version in named:
        assert lock[package] == version, f"{name}/Dockerfile says {package} {version}, the lock has {lock[package]}"
    # The lock itself carries hashes.
    assert "--hash=sha256:" in (CONTAINERS / name / "requirements.txt").read_text()


def test_trainer_image_pins_the_sd_scripts_commit():
    text = (CONTAINERS / "trainer/Dockerfile").read_text()
    assert "ARG SD_SCRIPTS_COMMIT=48d368fa557731ad0488c07304dfeba8c07910eb" in text
    assert "openai/clip-vit-large-patch14" in text and "AVATAR_TOKENIZER_CACHE_DIR=/opt/tokenizers" in text


def test_both_locks_agree_on_every_shared_package():
    captioner, trainer = _lock("captioner"), _lock("trainer")
    assert {p: (v, trainer[p]) for p, v in captioner.items() if trainer.get(p) != v} == {}
    assert captioner["torch"] == trainer["torch"] == "2.7.1"


def _stages(text):
    """The Dockerfile split at each FROM: [(from line, body)]."""
    parts = re.split(r"^(FROM .*)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_the_one_gpu_image_ships_no_build_tools_no_cuda_base_and_both_packages():
    text = (CONTAINERS / "trainer/Dockerfile").read_text()
    (build_from, build), (final_from, final) = _stages(text)
    assert build_from == "FROM ${PYTHON_IMAGE} AS build" and final_from == "FROM ${PYTHON_IMAGE}"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    # torch's nvidia-* wheels are the CUDA libraries: a CUDA base image would ship them twice.
    assert "nvidia/cuda:" not in text
    # Tools and downloads only in the build stage.
    assert " git" in build and "/uv " in build and "snapshot_download" in build
    for tool in (" git", "uv:", "/uv", "build-essential", "gcc", "snapshot_download", "pip install"):
        assert tool not in final, f"{tool!r} in the final stage"
    # Weights once: BLIP baked in the build stage, copied once.
    assert text.count("Salesforce/blip-image-captioning-large") == 1 and final.count("COPY --from=build /opt/models") == 1
    # Both packages, then both self-tests, after the code.
    order = [
        final.index(s)
        for s in (
            "COPY common/src",
            "COPY captioner/src",
            "COPY trainer/src",
            "python -m captioner self-test",
            "python -m trainer self-test",
        )
    ]
    assert order == sorted(order)
    assert "AVATAR_BLIP_MODEL_DIR=/opt/models/blip-image-captioning-large" in final
    # The largest site-packages folders travel as their own layers.
    assert [line for line in final.splitlines() if line.startswith("COPY --from=build /layers/")] == [
        "COPY --from=build /layers/cuda-a/ ${SP}/",
        "COPY --from=build /layers/cuda-b/ ${SP}/",
        "COPY --from=build /layers/torch/ ${SP}/",
    ]


def test_the_captioner_lock_is_inside_the_trainer_lock_so_one_install_serves_both():
    captioner, trainer = _lock("captioner"), _lock("trainer")
    assert set(captioner) - set(trainer) == set()
