"""kohya's console output into events, read from a transcript of a real sd-scripts 48d368fa run.

tests/fixtures/kohya-transcript.{out,err}.txt: stdout and stderr of test_train_real_kohya.py's
2-epoch CPU run (2 images, batch 1, save_state); kohya-resume-transcript.*: the same config resumed
from the epoch-1 state with --initial_epoch 2, as the trainer resumes. Refresh them with AVATAR_SD_SCRIPTS_DIR=<checkout> AVATAR_KOHYA_TRANSCRIPT_DIR=
containers/trainer/tests/fixtures pytest trainer/tests/test_train_real_kohya.py (paths under the
test's tmp dir read /tmp/run in stdout; rich wraps the logger's lines at 80 columns).
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from trainer.progress import parse_line, split_lines

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _transcript(name, stream):
    return (FIXTURES / f"{name}.{stream}.txt").read_text()


def _events(text):
    lines, rest = split_lines(text)
    assert rest == ""
    return [e for e in map(parse_line, lines) if e]


def test_tqdm_carriage_returns_split_into_updates_and_keep_the_partial_one():
    err = _transcript("kohya-transcript", "err")
    # tqdm redraws with \r and the logger writes straight after a bar without a newline.
    cut = err.index("avr_loss=1.05]") + len("avr_loss=")
    lines, rest = split_lines(err[:cut])
    assert rest.startswith("steps:  50%|") and rest.endswith("avr_loss=")
    assert lines[-1].startswith("steps:  50%|") and lines[-1].endswith("avr_loss=1.07]")


def test_the_real_stdout_gives_total_epochs_and_checkpoint_saves():
    events = [(e.kind, e.total, e.epoch, e.epochs, e.path) for e in _events(_transcript("kohya-transcript", "out"))]
    assert events == [
        ("total", 4, None, None, None),
        ("epoch", None, 1, 2, None),
        ("checkpoint", None, None, None, "/tmp/run/out/anantn-000001.safetensors"),
        ("epoch", None, 2, 2, None),
        ("checkpoint", None, None, None, "/tmp/run/out/anantn.safetensors"),
    ]


def test_the_real_stderr_gives_steps_losses_and_state_saves():
    events = [(e.kind, e.step, e.total, e.loss, e.epoch) for e in _events(_transcript("kohya-transcript", "err"))]
    # tqdm draws each step twice: once as it advances, once with the new avr_loss. A bar without
    # avr_loss yet (0/4, the first 1/4) is no event; "epoch is incremented." is no epoch line.
    assert events == [
        ("step", 1, 4, 1.07, None),
        ("step", 2, 4, 1.07, None),
        ("step", 2, 4, 1.05, None),
        ("state", None, None, None, 1),
        ("step", 3, 4, 1.05, None),
        ("step", 3, 4, 1.01, None),
        ("step", 4, 4, 1.01, None),
        ("step", 4, 4, 1.04, None),
        ("state", None, None, None, None),  # "saving last state."
        ("step", 4, 4, 1.04, None),  # tqdm's close
    ]


def test_a_resumed_run_counts_its_steps_from_one_again():
    out = _events(_transcript("kohya-resume-transcript", "out"))
    assert [(e.kind, e.epoch) for e in out if e.kind == "epoch"] == [("epoch", 2)]
    err = _transcript("kohya-resume-transcript", "err")
    steps = [(e.step, e.total) for e in _events(err) if e.kind == "step"]
    assert steps[0] == (1, 4) and max(s for s, _ in steps) == 2  # epoch 2 is global steps 3-4
    # ...and the state it saves records that count (hence --initial_epoch on every resume).
    assert re.search(r"load train state from.*?'current_step':\s*2\}", err, re.S)
    assert re.search(r"anantn-state/t\s+rain_state\.json at epoch 2\s+step 2\b", err)


def test_nan_and_inf_losses_parse_as_floats():
    line = next(ln for ln in split_lines(_transcript("kohya-transcript", "err"))[0] if "avr_loss=1.05]" in ln)
    assert math.isnan(parse_line(line.replace("avr_loss=1.05]", "avr_loss=nan]")).loss)
    assert parse_line(line.replace("avr_loss=1.05]", "avr_loss=inf]")).loss == math.inf


def test_unrelated_lines_are_no_events():
    assert parse_line("  num epochs / epoch数: 5") is None
    assert parse_line("import network module: networks.lora") is None
    assert parse_line("                    INFO     epoch is incremented.             train_util.py:784") is None


def _log_records(text):
    """The rich logger's records, with the lines it wrapped at 80 columns joined again."""
    records = []
    for line in split_lines(text)[0]:
        if line.startswith(" " * 29) and records:
            records[-1] += line.strip()  # rich wraps mid-word, so no space is put back
        else:
            records.append(re.sub(r"\s+\S+\.py:\d+\s*$", "", line.rstrip()))
    return records


def _state_writes(text, folder):
    """The files of one state folder, in the order they were written."""
    return [m[1] for r in _log_records(text) if (m := re.search(re.escape(folder) + r"/([\w.]+?)(?: at epoch|$)", r))]


def test_the_kohya_stand_in_speaks_like_the_real_transcript(tmp_path):
    """fake_kohya.py on the real run's shape: 2 images x 1 repeat x 2 epochs, batch 1, save_state."""
    images = tmp_path / "1_anantn"
    images.mkdir()
    for i in range(2):
        (images / f"anantn-0{i}.png").write_bytes(b"")  # the stand-in only globs the names
    (tmp_path / "dataset.toml").write_text(f'[[datasets]]\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = "{images}"\nnum_repeats = 1\n')
    (tmp_path / "config.toml").write_text(
        f'dataset_config = "{tmp_path / "dataset.toml"}"\noutput_dir = "{tmp_path / "out"}"\noutput_name = "anantn"\n'
        'max_train_epochs = 2\nsave_state = true\nnetwork_dim = 4\nnetwork_alpha = 2.0\nnetwork_module = "networks.lora"\n'
    )
    fake = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fake_kohya.py")), "--config_file", str(tmp_path / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        # 50 ms between state files, so their mtimes (coarse on Linux) give the write order.
        env={**os.environ, "FAKE_KOHYA_SAVE_DELAY": "0.05"},
    )
    assert fake.returncode == 0, fake.stderr

    def shape(text):
        kinds = [e.kind if e.kind != "state" else f"state {e.epoch}" for e in _events(text)]
        return [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]  # tqdm redraws collapse

    for stream, fake_text in (("out", fake.stdout), ("err", fake.stderr)):
        assert shape(fake_text) == shape(_transcript("kohya-transcript", stream)), stream
    fake_steps = sorted({(e.step, e.total) for e in _events(fake.stderr) if e.kind == "step"})
    real_steps = sorted({(e.step, e.total) for e in _events(_transcript("kohya-transcript", "err")) if e.kind == "step"})
    assert fake_steps == real_steps
    # The files of a state folder, in write order: train_state.json first, as accelerate's pre-hook does.
    real_err = _transcript("kohya-transcript", "err")
    for folder in ("anantn-000001-state", "anantn-state"):
        real = _state_writes(real_err, folder)
        assert real[0] == "train_state.json" and len(real) == 7
        fake_names = ["train_state.json"] + [
            p.name
            for p in sorted((tmp_path / "out" / folder).iterdir(), key=lambda p: p.stat().st_mtime_ns)
            if p.name != "train_state.json"
        ]
        assert fake_names == real
        assert sorted(p.name for p in (tmp_path / "out" / folder).iterdir()) == sorted(real)


class _Progress:
    """Collects what the run reports; status.json writing is tested end to end in test_train_stage."""

    def __init__(self):
        self.calls = []

    def progress(self, fraction, message, **fields):
        self.calls.append((fraction, message, fields))


def test_losses_belong_to_the_epoch_of_their_step_even_when_stdout_runs_ahead(tmp_path):
    import json

    from conftest import REPO
    from trainer.progress import Event
    from trainer.publish import Publisher
    from trainer.supervise import Supervisor

    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["plan"].update(epochs=4, totalSteps=8)
    run = Supervisor(_Progress(), plan, Publisher(None, plan, tmp_path / "output"))
    run.publisher.diary = {"lossPerEpoch": {}}
    # kohya's stdout (epoch lines) is read by another thread than its stderr (tqdm): here every
    # epoch line arrives before the first step line, as happens when the pipes drain unevenly.
    for epoch in range(1, 5):
        run.on_event(Event("epoch", epoch=epoch, epochs=4))
    for step, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], start=1):
        run.on_event(Event("step", step=step, total=8, loss=loss))

    assert run.publisher.diary["lossPerEpoch"] == {"1": 0.8, "2": 0.6, "3": 0.4, "4": 0.2}
    assert run.epoch == 4


def test_a_resumed_run_reports_steps_and_losses_after_the_resumed_epochs(tmp_path):
    from conftest import REPO
    from trainer.publish import Publisher
    from trainer.supervise import Supervisor

    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["plan"].update(epochs=2, totalSteps=4)
    # Resumed from anantn-000001-state (what find_resume_state returns with epoch 1).
    run = Supervisor(_Progress(), plan, Publisher(None, plan, tmp_path / "output"), resumed_epoch=1)
    run.publisher.diary = {"lossPerEpoch": {"1": 1.05}}
    for stream in ("out", "err"):
        for ev in _events(_transcript("kohya-resume-transcript", stream)):
            run.on_event(ev)
    assert (run.step, run.total, run.epoch) == (4, 4, 2)
    assert run.publisher.diary["lossPerEpoch"] == {"1": 1.05, "2": 1.04}
    assert [c[1] for c in run.status.calls if c[1].startswith("step")] == ["step 3/4", "step 4/4", "step 4/4", "step 4/4"]


def test_what_kohya_has_moved_past_is_proven(tmp_path):
    """The real run's lines, in order, against the write order (see trainer.publish.write_rank)."""
    from conftest import REPO
    from trainer.publish import Publisher, write_rank
    from trainer.supervise import Supervisor

    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["plan"].update(epochs=2, totalSteps=4)
    run = Supervisor(_Progress(), plan, Publisher(None, plan, tmp_path / "output"))
    run.publisher.diary = {"lossPerEpoch": {}}
    out = tmp_path / "out"
    (out / "anantn-000001-state").mkdir(parents=True)
    for name in ("anantn-000001.safetensors", "anantn.safetensors"):
        (out / name).write_bytes(b"")
    (out / "anantn-state").mkdir()
    ranks = {p.name: write_rank(p, "anantn", 2)[0] for p in out.iterdir()}
    assert ranks == {"anantn-000001.safetensors": 1, "anantn-000001-state": 2, "anantn-state": 3, "anantn.safetensors": 4}

    def proofs(stream):
        run.publisher.proven = 0
        seen = []
        for ev in _events(_transcript("kohya-transcript", stream)):
            run.on_event(ev)
            if ev.kind != "step":
                seen.append((ev.kind, ev.epoch, run.publisher.proven))
        return seen

    # stdout and stderr are read apart: each proves on its own. "epoch 2/2" proves epoch 1's
    # checkpoint and state; "saving state at epoch 1" its checkpoint only; "saving last state."
    # everything before the last epoch. Nothing proves the last state or the final checkpoint but a
    # clean exit (or, for the state, the final checkpoint appearing).
    assert proofs("out") == [("total", None, 0), ("epoch", 1, 0), ("checkpoint", None, 0), ("epoch", 2, 2), ("checkpoint", None, 2)]
    assert proofs("err") == [("state", 1, 1), ("state", None, 2)]
