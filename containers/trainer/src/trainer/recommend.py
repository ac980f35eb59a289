"""The recommended checkpoint and LoRA strength, chosen from the grid's scores by one documented rule.

docs/training.md, Reading the grid: the best likeness while the prompt still wins, usually a middle epoch at strength
0.8-1.0. Pure functions of the score table, so the rule is tested on constructed tables.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from avatar_job import StageError, layout

ADHERENCE_MARGIN = 0.10  # keep pairs whose adherence is within 10% of the best pair's
LIKENESS_TIE = 0.005  # likeness this close to the best counts as a tie
PREFERRED_STRENGTHS = (0.8, 1.0)

RULE = (
    "Scores are averaged over the grid's prompts for each checkpoint and strength; a pair with any broken image is "
    f"out, and so is strength 0 (the base model, no LoRA). Of the rest, keep the pairs whose prompt adherence is at least the best pair's minus {ADHERENCE_MARGIN:.0%} "
    "of its magnitude (the prompt still wins), and recommend the one with the highest likeness. Likeness within "
    f"{LIKENESS_TIE} of the highest is a tie, broken in this order: strength within {PREFERRED_STRENGTHS[0]}-"
    f"{PREFERRED_STRENGTHS[1]} (docs/training.md), the epoch nearest the middle of training, the strength nearest 0.9, the higher "
    "adherence, the earlier epoch, the higher strength. The runner-up is the same rule applied to the remaining pairs. "
    "When no pair is left the stage fails with NO_USABLE_CHECKPOINT."
)


def strength_text(s: float) -> str:
    """A1111's spelling: 1.0, 0.9, 0.85."""
    text = f"{s:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def tag(checkpoint: str, strength: float) -> str:
    """The A1111 prompt tag: <lora:FILE STEM:STRENGTH>."""
    return f"<lora:{PurePosixPath(checkpoint).stem}:{strength_text(strength)}>"


def pairs(cells: list[dict]) -> list[dict]:
    """One row per (checkpoint, strength): mean adherence and likeness over its prompts, broken if any image is."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["checkpoint"], c["strength"]), []).append(c)
    out = []
    for (ckpt, strength), group in groups.items():
        out.append(
            {
                "checkpoint": ckpt,
                "epoch": group[0]["epoch"],
                "strength": strength,
                "adherence": round(sum(c["adherence"] for c in group) / len(group), 4),
                "likeness": round(sum(c["likeness"] for c in group) / len(group), 4),
                "broken": sorted({b for c in group for b in c["broken"]}),
            }
        )
    return sorted(out, key=lambda p: (p["epoch"], -p["strength"]))


def _order(p: dict, middle: float) -> tuple:
    lo, hi = PREFERRED_STRENGTHS
    return (
        not (lo <= p["strength"] <= hi),
        abs(p["epoch"] - middle),
        abs(p["strength"] - 0.9),
        -p["adherence"],
        p["epoch"],
        -p["strength"],
    )


def _pick(candidates: list[dict], middle: float) -> tuple[dict, bool]:
    """The best candidate, and whether a likeness tie was broken to choose it."""
    best = max(p["likeness"] for p in candidates)
    tied = [p for p in candidates if p["likeness"] >= best - LIKENESS_TIE]
    return min(tied, key=lambda p: _order(p, middle)), len(tied) > 1


def recommend(table: list[dict], epochs: int) -> dict:
    """table: pairs() rows. Returns the recommendation (without file-specific fields) or raises NO_USABLE_CHECKPOINT."""
    with_lora = [p for p in table if p["strength"] > 0]
    usable = [p for p in with_lora if not p["broken"]]
    if not usable:
        why = sorted({b for p in with_lora for b in p["broken"]})
        if not with_lora:
            raise StageError(
                "NO_USABLE_CHECKPOINT",
                "spec.evaluation.strengths has no strength above 0, so no LoRA was tested; use the recipe's 1.0-0.5",
                "spec.evaluation.strengths",
            )
        raise StageError(
            "NO_USABLE_CHECKPOINT",
            f"every one of the {len(with_lora)} checkpoint/strength pairs rendered a broken image "
            f"({', '.join(why)}; see {layout.SCORES} and {layout.file_name(layout.GRID)}): retrain with a lower learning "
            "rate or fewer epochs, or check the photos",
            layout.SCORES,
        )
    best_adherence = max(p["adherence"] for p in usable)
    floor = best_adherence - ADHERENCE_MARGIN * abs(best_adherence)
    candidates = [p for p in usable if p["adherence"] >= floor]
    middle = (1 + epochs) / 2
    winner, tie = _pick(candidates, middle)
    rest = [p for p in candidates if p is not winner]
    runner = _pick(rest, middle)[0] if rest else None
    reason = (
        f"epoch {winner['epoch']} at strength {strength_text(winner['strength'])}: likeness {winner['likeness']:.4f}, the highest "
        f"of the {len(candidates)} of {len(usable)} unbroken pairs whose adherence is at least {floor:.4f} (best "
        f"{best_adherence:.4f}); its adherence {winner['adherence']:.4f}"
    )
    if tie:
        reason += f"; likeness tied within {LIKENESS_TIE}, decided by the tie-breaks (strength {PREFERRED_STRENGTHS[0]}-{PREFERRED_STRENGTHS[1]}, middle epoch)"
    if len(usable) < len(with_lora):
        n = len(with_lora) - len(usable)
        reason += f"; {n} pair{'s' if n > 1 else ''} excluded as broken"

    def brief(p: dict) -> dict:
        return {
            "checkpoint": p["checkpoint"],
            "epoch": p["epoch"],
            "strength": p["strength"],
            "tag": tag(p["checkpoint"], p["strength"]),
            "adherence": p["adherence"],
            "likeness": p["likeness"],
        }

    return {
        **brief(winner),
        "runnerUp": brief(runner) if runner else None,
        "reason": reason,
        "rule": RULE,
        "adherenceFloor": round(floor, 4),
    }
