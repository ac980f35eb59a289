"""evaluate/report.html: the whole job on one self-contained page a person can read at a glance.

Every image is a data: URI and the CSS is inline; a Content-Security-Policy forbids any fetch, so the
page renders the same offline, from a presigned results link or from disk. Every text that came from the
user or a model (captions, prompts, names) is HTML-escaped. A missing input (no contact sheet, no diary)
leaves its section out with a line saying so, never a broken image.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime

from avatar_job import layout

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0;background:#f4f4f6;color:#1d1d22}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #d5d5dc;padding-bottom:4px}
section{background:#fff;border-radius:8px;padding:4px 18px 16px;margin-bottom:16px;box-shadow:0 1px 2px #0001}
img{max-width:100%;height:auto;display:block;border-radius:4px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#fafafc} td.num{text-align:right;font-variant-numeric:tabular-nums}
.rec{font-size:17px;background:#fff4fb;border-left:5px solid #ff00a0;padding:10px 14px;border-radius:4px}
code{background:#f0f0f4;padding:1px 5px;border-radius:3px;font-size:14px}
.broken{color:#b00020} .muted{color:#6b6b76;font-size:13px} .chosen td{background:#fff4fb;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;font-size:13px} dt{font-weight:600}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def loss_svg(loss_per_epoch: dict[str, float], width: int = 640, height: int = 240) -> str:
    """An inline SVG line plot of the mean loss per epoch, with labelled axes."""
    points = sorted((int(e), float(v)) for e, v in loss_per_epoch.items())
    left, right, top, bottom = 56, 16, 14, 36
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    e0, e1 = points[0][0], points[-1][0]

    def x(e: int) -> float:
        return left + (width - left - right) * ((e - e0) / (e1 - e0) if e1 > e0 else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="loss per epoch" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" style="max-width:100%;height:auto;font:12px sans-serif">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
    ]
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
    for e, _ in points:
        parts.append(f'<text x="{x(e):.1f}" y="{height - bottom + 16}" text-anchor="middle">{e}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" text-anchor="middle">epoch</text>')
    parts.append(
        f'<polyline fill="none" stroke="#5b3cc4" stroke-width="2.5" points="{" ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in points)}"/>'
    )
    for e, v in points:
        parts.append(f'<circle cx="{x(e):.1f}" cy="{y(v):.1f}" r="4" fill="#5b3cc4"><title>epoch {e}: loss {v:.5f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _parse(ts: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None
    except ValueError:
        return None


def _duration(a: str | None, b: str | None) -> str:
    ta, tb = _parse(a), _parse(b)
    if not ta or not tb or tb < ta:
        return "unknown"
    s = int((tb - ta).total_seconds())
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def stage_times(
    created_at: str | None, diary: dict | None, evaluate_started: str, evaluate_finished: str
) -> list[tuple[str, str, str, str]]:
    """(stage, start, end, duration) from what the job records: status.json's createdAt, the train diary, this stage."""
    rows = []
    train_start = diary.get("startedAt") if diary else None
    if created_at and train_start:
        rows.append(("intake, validate, normalize, caption", created_at, train_start, _duration(created_at, train_start)))
    if diary and train_start:
        end = diary.get("finishedAt") or diary.get("updatedAt")
        tries = len(diary.get("attempts", []))
        label = "train" + (f" ({tries} attempts: Spot reclaims resumed)" if tries > 1 else "")
        rows.append((label, train_start, end or "", _duration(train_start, end)))
    rows.append(("evaluate", evaluate_started, evaluate_finished, _duration(evaluate_started, evaluate_finished)))
    return rows


def _img(png: bytes | None, alt: str, missing: str) -> str:
    if not png:
        return f'<p class="muted">{esc(missing)}</p>'
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}">'


def build(
    *,
    scores: dict,
    grid_pngs: list[bytes],
    pack_png: bytes,
    contact_sheet_png: bytes | None,
    captions: dict | None,
    diary: dict | None,
    times: list[tuple[str, str, str, str]],
    cost: dict | None = None,
) -> str:
    """The page. `cost`: {"amount": float, "currency": str, "source": str} when the job's cost is known; else left out."""
    rec = scores["recommendation"]
    name = scores["outputName"]
    out = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(name)}: LoRA job report</title>',
        f"<style>{CSS}</style></head><body><main>",
        f'<h1>{esc(name)}</h1><p class="muted">team {esc(scores["teamId"])} &middot; job {esc(scores["jobId"])} &middot; '
        f"{esc(scores['kind'])} &middot; report written {esc(scores['createdAt'])}</p>",
    ]

    out.append(
        "<section><h2>Recommendation</h2>"
        f'<p class="rec">Use <b>{esc(rec["checkpoint"])}</b> (epoch {esc(rec["epoch"])}) at strength <b>{esc(rec["strength"])}</b>: '
        f"<code>{esc(rec['tag'])}</code></p><p>{esc(rec['reason'])}.</p>"
    )
    if rec.get("runnerUp"):
        r = rec["runnerUp"]
        out.append(
            f"<p>Runner-up: {esc(r['checkpoint'])} at strength {esc(r['strength'])} <code>{esc(r['tag'])}</code> "
            f"(likeness {r['likeness']:.4f}, adherence {r['adherence']:.4f}).</p>"
        )
    out.append(f'<p class="muted">Rule: {esc(rec["rule"])}</p></section>')

    out.append(
        "<section><h2>Avatar pack</h2>"
        f"<p>Every pack prompt at the recommended checkpoint and strength, {len(scores['pack']['seeds'])} seed(s) each.</p>"
        + _img(pack_png, "the avatar pack", "")
        + "</section>"
    )

    out.append("<section><h2>Grid: checkpoints across, strengths down</h2><p>The recommended cell is outlined in magenta.</p>")
    for g, png in zip(scores["grids"], grid_pngs, strict=True):
        out.append(f"<p><i>{esc(g['prompt'])}</i></p>" + _img(png, f"grid for {g['prompt']}", ""))
    out.append("</section>")

    out.append(
        "<section><h2>Scores</h2><table><tr><th>checkpoint</th><th>epoch</th><th>strength</th><th>adherence</th>"
        "<th>likeness</th><th>broken</th></tr>"
    )
    for p in scores["pairs"]:
        chosen = p["checkpoint"] == rec["checkpoint"] and p["strength"] == rec["strength"]
        out.append(
            f'<tr{" class=chosen" if chosen else ""}><td>{esc(p["checkpoint"])}</td><td class="num">{p["epoch"]}</td>'
            f'<td class="num">{p["strength"]}</td><td class="num">{p["adherence"]:.4f}</td><td class="num">{p["likeness"]:.4f}</td>'
            f'<td class="broken">{esc(", ".join(p["broken"]))}</td></tr>'
        )
    out.append("</table><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in scores["metrics"].items()) + "</dl></section>")

    out.append("<section><h2>Training</h2>")
    loss = (diary or {}).get("lossPerEpoch") or {}
    out.append(loss_svg(loss) if loss else f'<p class="muted">No loss per epoch was recorded ({layout.DIARY} missing or empty).</p>')
    out.append(
        "<table><tr><th>stage</th><th>started</th><th>finished</th><th>took</th></tr>"
        + "".join(f'<tr><td>{esc(s)}</td><td>{esc(a)}</td><td>{esc(b)}</td><td class="num">{esc(d)}</td></tr>' for s, a, b, d in times)
        + "</table>"
    )
    if cost:
        out.append(f'<p>Cost: <b>{cost["amount"]:.2f} {esc(cost["currency"])}</b> <span class="muted">({esc(cost["source"])})</span></p>')
    out.append("</section>")

    out.append(
        "<section><h2>Photos</h2>"
        + _img(contact_sheet_png, "the intake contact sheet", f"No intake contact sheet ({layout.CONTACT_SHEET}) was found.")
        + "</section>"
    )
    out.append("<section><h2>Captions</h2>")
    if captions and captions.get("captions"):
        out.append(
            "<table><tr><th>image</th><th>caption</th><th>by</th></tr>"
            + "".join(
                f"<tr><td>{esc(c.get('image', ''))}</td><td>{esc(c.get('caption', ''))}</td><td>{esc(c.get('source', ''))}</td></tr>"
                for c in captions["captions"]
            )
            + "</table>"
        )
    else:
        out.append(f'<p class="muted">No captions ({layout.CAPTIONS}) were found.</p>')
    out.append("</section></main></body></html>\n")
    return "".join(out)
