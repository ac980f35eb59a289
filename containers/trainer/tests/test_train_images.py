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


@pytest.mark.parametrize("name", ["captioner", "trainer"])
def test_dockerfile_installs_the_hashed_lock_then_code_then_self_test(name):
    text = (CONTAINERS / name / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\d+\.\d+\.\d+-[a-z-]+-ubuntu\d\d\.\d\d$", text, re.M)
    assert "--require-hashes -r /tmp/requirements.txt" in text
    order = [text.index(s) for s in (f"COPY {name}/requirements.txt", "--require-hashes", "COPY common/src", f"COPY {name}/src", f"RUN python -m {name} self-test")]
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
