"""report.html: built from constructed inputs (real PNGs, a hostile caption), checked as text and in
Debian's headless Chromium: no console error, every image resolves, the screenshot is not blank."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from headless import artifact_dir, find_chromium, load_page
from trainer import recommend, render, report, scores

HOSTILE = '<script>alert("x")</script><img src="https://evil.example/x.png">'


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _picture(seed: int, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    return Image.fromarray(base).resize((size, size), Image.BICUBIC)


def inputs(with_optional: bool = True):
    names = ["zz-000001.safetensors", "zz-000002.safetensors", "zz.safetensors"]
    strengths = [1.0, 0.8]
    pairs = [
        {
            "checkpoint": n,
            "epoch": e,
            "strength": s,
            "adherence": 0.25 + 0.01 * e,
            "likeness": 0.5 + 0.1 * e * s,
            "broken": ["black", "uniform"] if (e, s) == (3, 1.0) else [],
        }
        for e, n in enumerate(names, 1)
        for s in strengths
    ]
    rec = recommend.recommend(pairs, 3)
    cells = [[_picture(10 * r + c) for c in range(3)] for r in range(2)]
    cells[0][2] = Image.new("RGB", (128, 128))
    picture = render.outline(
        render.grid(cells, [f"e{e}" for e in (1, 2, 3)], [f"strength {s}" for s in strengths]),
        (128, 128),
        strengths.index(rec["strength"]),
        rec["epoch"] - 1,
    )
    pack = render.contact_sheet([_picture(100 + i) for i in range(8)], [f"{i + 1}. seed 1" for i in range(8)], columns=4, thumb=128)
    doc = {
        "teamId": "team-a",
        "jobId": "job-1",
        "outputName": "zz",
        "kind": "character",
        "createdAt": "2026-01-01T01:00:00.000Z",
        "metrics": {**scores.DEFINITIONS},
        "recommendation": rec,
        "pairs": pairs,
        "grids": [{"prompt": "a portrait of zz, red hair", "image": "evaluate/grid.png"}],
        "pack": {"seeds": [1], "images": []},
    }
    diary = {
        "startedAt": "2026-01-01T00:10:00.000Z",
        "finishedAt": "2026-01-01T00:55:30.000Z",
        "attempts": [{"startedAt": "2026-01-01T00:10:00.000Z"}, {"startedAt": "2026-01-01T00:30:00.000Z"}],
        "lossPerEpoch": {"1": 0.14, "2": 0.11, "3": 0.105},
    }
    kwargs = dict(
        scores=doc,
        grid_pngs=[_png(picture)],
        pack_png=_png(pack),
        contact_sheet_png=_png(render.contact_sheet([_picture(200 + i) for i in range(6)], [f"p{i}.jpg" for i in range(6)], 3, 96)),
        captions={
            "captions": [
                {"image": "p0.jpg", "caption": "photo of zz, a man " + HOSTILE, "source": "user"},
                {"image": "p1.jpg", "caption": "photo of zz, a man smiling", "source": "blip"},
            ]
        },
        diary=diary,
        times=report.stage_times("2026-01-01T00:00:00.000Z", diary, "2026-01-01T00:56:00.000Z", "2026-01-01T01:00:05.000Z"),
    )
    if not with_optional:
        kwargs.update(
            contact_sheet_png=None,
            captions=None,
            diary=None,
            times=report.stage_times(None, None, "2026-01-01T00:56:00.000Z", "2026-01-01T01:00:05.000Z"),
        )
    return kwargs


def test_the_report_is_self_contained_and_escapes_what_users_wrote():
    page = report.build(**inputs(), cost={"amount": 1.234, "currency": "USD", "source": "estimate"})
    # Nothing to fetch: no src or href but data: URIs (the hostile caption's URL is escaped text).
    assert page.count('src="') == page.count('src="data:image/png;base64,') and "href=" not in page
    assert "&lt;script&gt;" in page and "<script" not in page and "src=&quot;https://evil.example" in page
    assert page.count('src="data:image/png;base64,') == 3  # the pack, one grid, the intake sheet (the hostile <img> is text)
    assert "default-src 'none'" in page
    rec = inputs()["scores"]["recommendation"]
    assert rec["tag"] == "<lora:zz:0.8>"  # (3, 1.0) likes more but is broken
    assert "<code>&lt;lora:zz:0.8&gt;</code>" in page
    assert "Cost: <b>1.23 USD</b>" in page
    # Times per stage come from status.json's createdAt, the train diary and this stage.
    assert "45m 30s" in page and "2 attempts" in page and "4m 05s" in page and "10m 00s" in page
    # Unknown cost and missing inputs are left out with a line, never a broken image.
    bare = report.build(**inputs(with_optional=False))
    assert "Cost" not in bare and bare.count("data:image/png") == 2
    assert "No intake contact sheet" in bare and "No captions" in bare and "No loss per epoch" in bare


def test_the_loss_plot_places_each_epoch():
    svg = report.loss_svg({"1": 0.3, "3": 0.1, "2": 0.2}, width=200, height=100)
    pts = svg.split('points="')[1].split('"')[0].split()
    xs, ys = zip(*((float(a), float(b)) for a, b in (p.split(",") for p in pts)), strict=True)
    assert xs == (56.0, 120.0, 184.0)  # epochs in order across the plot width (left 56, right 16)
    assert ys[0] < ys[1] < ys[2]  # falling loss goes down the page
    assert "epoch 3: loss 0.10000" in svg
    assert report.loss_svg({"1": 0.2}).count("<circle") == 1  # one epoch still plots


def test_the_report_renders_in_headless_chromium():
    binary = find_chromium()
    if not binary:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); CI installs it")
    out = artifact_dir(REPO)
    page_path = out / "report.html"
    page_path.write_text(report.build(**inputs()))
    result = load_page(binary, page_path.as_uri())
    shot = out / "report.png"
    shot.write_bytes(result["png"])
    print(f"\nreport screenshot: {shot}")
    assert result["errors"] == []
    assert result["scripts"] == 0, "the hostile caption must stay text"
    assert len(result["images"]) == 3 and all(done and w > 0 and h > 0 for done, w, h, _ in result["images"]), result["images"]
    assert result["title"] == "zz: LoRA job report"
    pixels = np.asarray(Image.open(io.BytesIO(result["png"])).convert("RGB"))
    assert pixels.shape[1] == 1200 and pixels.shape[0] > 1500  # the whole page, not the first screen
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000, "the screenshot is not blank"
    # A page that loads a network resource is caught: the same check reports the CSP's refusal.
    broken = out / "report-broken.html"
    broken.write_text(report.build(**inputs()).replace("</main>", '<img src="https://example.invalid/x.png" alt="net"></main>'))
    result = load_page(binary, broken.as_uri())
    assert result["errors"] and any("Content Security Policy" in e or "example.invalid" in e for e in result["errors"]), result["errors"]
    assert [w for _, w, _, alt in result["images"] if alt == "net"] == [0]
