"""The recommendation rule on constructed score tables: deterministic, ties, broken pairs, all broken."""

import random

import pytest

from avatar_job import StageError
from trainer import recommend


def pair(epoch, strength, adherence, likeness, broken=(), epochs=5):
    name = "zz.safetensors" if epoch == epochs else f"zz-{epoch:06d}.safetensors"
    return {"checkpoint": name, "epoch": epoch, "strength": strength, "adherence": adherence, "likeness": likeness, "broken": list(broken)}


def picked(rec):
    return rec["epoch"], rec["strength"]


def test_best_likeness_among_pairs_where_the_prompt_still_wins():
    table = [
        pair(5, 1.0, 0.20, 0.90),  # most like the subject, but the prompt lost (0.20 < 0.9 * 0.30)
        pair(3, 0.9, 0.28, 0.80),  # the answer
        pair(2, 0.8, 0.30, 0.70),
        pair(1, 0.5, 0.31, 0.50),  # best adherence sets the floor: 0.31 - 10% = 0.279
    ]
    rec = recommend.recommend(table, 5)
    assert picked(rec) == (3, 0.9)
    assert rec["adherenceFloor"] == pytest.approx(0.279)
    assert rec["tag"] == "<lora:zz-000003:0.9>" and rec["checkpoint"] == "zz-000003.safetensors"
    assert picked(rec["runnerUp"]) == (2, 0.8) and rec["runnerUp"]["tag"] == "<lora:zz-000002:0.8>"
    assert "likeness 0.8000" in rec["reason"] and "2 of 4" not in rec["reason"] and "3 of 4 unbroken" in rec["reason"]
    assert rec["rule"] == recommend.RULE and "NO_USABLE_CHECKPOINT" in rec["rule"]


def test_deterministic_whatever_the_order_of_the_table():
    table = [pair(e, s, 0.3 - 0.01 * e * s, 0.5 + 0.05 * e * s) for e in range(1, 6) for s in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)]
    want = recommend.recommend(table, 5)
    for seed in range(5):
        shuffled = table[:]
        random.Random(seed).shuffle(shuffled)
        assert recommend.recommend(shuffled, 5) == want


def test_likeness_ties_go_to_strength_0_8_to_1_then_the_middle_epoch():
    same = 0.7
    # Tied within LIKENESS_TIE: strength 0.7 at the middle epoch loses to 0.8-1.0 ...
    table = [pair(3, 0.7, 0.3, same + 0.004), pair(1, 1.0, 0.3, same), pair(5, 0.8, 0.3, same + 0.001), pair(4, 0.9, 0.3, same)]
    rec = recommend.recommend(table, 5)
    # ... and among 0.8-1.0 the epoch nearest the middle (3) wins: epoch 4.
    assert picked(rec) == (4, 0.9)
    assert "tied" in rec["reason"]
    # Same epoch distance (2 and 4 around 3): strength nearest 0.9, then higher adherence, then the earlier epoch.
    assert picked(recommend.recommend([pair(2, 1.0, 0.3, same), pair(4, 0.9, 0.3, same)], 5)) == (4, 0.9)
    assert picked(recommend.recommend([pair(2, 0.9, 0.3, same), pair(4, 0.9, 0.31, same)], 5)) == (4, 0.9)
    assert picked(recommend.recommend([pair(4, 0.9, 0.3, same), pair(2, 0.9, 0.3, same)], 5)) == (2, 0.9)
    assert picked(recommend.recommend([pair(3, 0.8, 0.3, same), pair(3, 1.0, 0.3, same)], 5)) == (3, 1.0)
    # Outside the tie margin likeness decides, tie-breaks or not.
    assert picked(recommend.recommend([pair(3, 0.9, 0.3, same), pair(1, 0.5, 0.3, same + 0.006)], 5)) == (1, 0.5)


def test_broken_pairs_are_never_recommended_and_all_broken_fails_with_a_code():
    table = [pair(3, 0.9, 0.3, 0.99, ["nearCopy"]), pair(2, 0.9, 0.3, 0.6), pair(4, 1.0, 0.5, 0.9, ["black", "uniform"])]
    rec = recommend.recommend(table, 5)
    assert picked(rec) == (2, 0.9) and rec["runnerUp"] is None
    assert "2 pairs excluded as broken" in rec["reason"]
    with pytest.raises(StageError) as e:
        recommend.recommend([dict(p, broken=p["broken"] or ["nan"]) for p in table], 5)
    assert e.value.code == "NO_USABLE_CHECKPOINT"
    assert "black, nan, nearCopy, uniform" in e.value.message and e.value.input == "evaluate/scores.json"


def test_strength_0_is_the_base_model_and_never_recommended():
    rec = recommend.recommend([pair(2, 0.0, 0.35, 0.95), pair(2, 0.5, 0.3, 0.6)], 2)
    assert picked(rec) == (2, 0.5) and rec["runnerUp"] is None
    with pytest.raises(StageError) as e:
        recommend.recommend([pair(1, 0.0, 0.3, 0.6), pair(2, 0.0, 0.3, 0.6)], 2)
    assert e.value.code == "NO_USABLE_CHECKPOINT" and e.value.input == "spec.evaluation.strengths"


def test_negative_adherence_keeps_the_best_pair_eligible():
    # A tiny random CLIP can give negative cosines; the floor stays below the best.
    rec = recommend.recommend([pair(1, 1.0, -0.2, 0.1), pair(2, 1.0, -0.5, 0.9)], 2)
    assert picked(rec) == (1, 1.0) and rec["adherenceFloor"] == pytest.approx(-0.22)


def test_pairs_average_the_prompts_and_carry_any_broken_flag():
    cells = [
        {"checkpoint": "a.safetensors", "epoch": 2, "strength": 1.0, "adherence": a, "likeness": like, "broken": b}
        for a, like, b in ((0.2, 0.4, []), (0.4, 0.6, ["black"]))
    ]
    cells.append({"checkpoint": "a-000001.safetensors", "epoch": 1, "strength": 0.5, "adherence": 0.1, "likeness": 0.2, "broken": []})
    assert recommend.pairs(cells) == [
        {"checkpoint": "a-000001.safetensors", "epoch": 1, "strength": 0.5, "adherence": 0.1, "likeness": 0.2, "broken": []},
        {"checkpoint": "a.safetensors", "epoch": 2, "strength": 1.0, "adherence": 0.3, "likeness": 0.5, "broken": ["black"]},
    ]


def test_a1111_tag_spelling():
    assert recommend.tag("zz.safetensors", 1) == "<lora:zz:1.0>"
    assert recommend.tag("zz-000003.safetensors", 0.85) == "<lora:zz-000003:0.85>"
    assert recommend.strength_text(0.5) == "0.5"
