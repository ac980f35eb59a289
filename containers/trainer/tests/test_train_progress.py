import math

from trainer.progress import parse_line, split_lines

STDERR = (
    "steps:   0%|          | 0/1875 [00:00<?, ?it/s]\r"
    "steps:   0%|          | 1/1875 [00:01<52:10,  1.67s/it]\r"
    "steps:   0%|          | 1/1875 [00:01<52:11,  1.67s/it, avr_loss=0.0894]\r"
    "steps:  12%|█▏        | 225/1875 [00:30<03:40,  7.50it/s, avr_loss=0.0912]\r"
    "steps:  12%|█▏        | 226/1875 [00:30<03:40,  7.50it/s, avr_loss=nan]\rsteps:  12%|█▏ | 227/18"
)


def test_tqdm_carriage_returns_split_into_updates_and_keep_the_partial_one():
    lines, rest = split_lines(STDERR)
    assert len(lines) == 5
    assert rest == "steps:  12%|█▏ | 227/18"


def test_tqdm_lines_give_step_total_and_loss():
    lines, _ = split_lines(STDERR)
    events = [parse_line(l) for l in lines]
    assert events[0] is None and events[1] is None  # no loss yet
    assert (events[2].step, events[2].total, events[2].loss) == (1, 1875, 0.0894)
    assert (events[3].kind, events[3].step, events[3].loss) == ("step", 225, 0.0912)
    assert events[4].step == 226 and math.isnan(events[4].loss)


def test_stdout_epoch_checkpoint_and_summary_lines():
    assert (parse_line("epoch 2/5").epoch, parse_line("epoch 2/5").epochs) == (2, 5)
    assert parse_line("2026-02-16 10:00:00 INFO     epoch 3/5                train_network.py:1200").epoch == 3
    ev = parse_line("saving checkpoint: /work/output/anantn-000001.safetensors")
    assert (ev.kind, ev.path) == ("checkpoint", "/work/output/anantn-000001.safetensors")
    ev = parse_line("  total optimization steps / 学習ステップ数: 1875")
    assert (ev.kind, ev.total) == ("total", 1875)
    assert parse_line("  num epochs / epoch数: 5") is None
    assert parse_line("import network module: networks.lora") is None


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
    from trainer.train import Run

    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["plan"].update(epochs=4, totalSteps=8)
    run = Run(job=None, status=_Progress(), plan=plan, workdir=tmp_path)
    run.diary = {"lossPerEpoch": {}}
    # kohya's stdout (epoch lines) is read by another thread than its stderr (tqdm): here every
    # epoch line arrives before the first step line, as happens when the pipes drain unevenly.
    for epoch in range(1, 5):
        run.on_event(Event("epoch", epoch=epoch, epochs=4))
    for step, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], start=1):
        run.on_event(Event("step", step=step, total=8, loss=loss))

    assert run.diary["lossPerEpoch"] == {"1": 0.8, "2": 0.6, "3": 0.4, "4": 0.2}
    assert run.epoch == 4
