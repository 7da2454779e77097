"""Self-contained HTML reports for ``evaluate`` and ``compare``: figures, plots and crops.

Every image is inlined as a ``data:`` URI, so ``report.html`` can be mailed or attached to a pull
request as one file; the plots are also written beside it as PNG files. A few lines of script
record on ``<body>`` how many images loaded (``data-images``, ``data-broken``), which a headless
browser (and the tests) can read back.
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

THUMB_HEIGHT = 128
REPORT_NAME = "report.html"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; font-size: 13px; margin-bottom: 16px; word-break: break-all; }
table.figures { border-collapse: collapse; font-size: 14px; }
table.figures td, table.figures th { padding: 4px 14px 4px 0; text-align: left; }
table.figures td.v { font-variant-numeric: tabular-nums; font-weight: 600; }
.plot { max-width: 720px; width: 100%; }
.rank { display: flex; align-items: flex-start; gap: 6px; margin: 10px 0; flex-wrap: nowrap; }
.cell { display: flex; flex-direction: column; align-items: center; font-size: 11px; width: 80px; }
.cell img, .cell .none { height: 136px; max-width: 80px; object-fit: contain; box-sizing: border-box;
  border: 4px solid #999; background: #eee; }
.cell .none { width: 64px; display: flex; align-items: center; justify-content: center; color: #777; }
.cell.query img, .cell.query .none { border-color: #2f6fd6; }
.cell.match img, .cell.match .none { border-color: #1e9e3a; }
.cell.miss img, .cell.miss .none { border-color: #d33a2c; }
.sep { width: 2px; align-self: stretch; background: #ccc; margin: 0 6px; }
.cap { margin-top: 2px; text-align: center; line-height: 1.25; word-break: break-all; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: -1px; margin: 0 4px 0 14px; }
table.moved { border-collapse: collapse; font-size: 13px; }
table.moved td, table.moved th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken', String(broken));
  document.body.setAttribute('data-thumbnails', String(document.querySelectorAll('.cell').length));
  document.body.setAttribute('data-status', broken ? 'broken-images' : 'ok');
});
"""


@dataclass(frozen=True)
class Thumb:
    """One crop in a ranked row: its pixels (None when the input table lacks it) and caption."""

    pixels: Optional[np.ndarray]
    caption: str
    kind: str  # "query", "match" or "miss"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(pixels: np.ndarray, height: int = THUMB_HEIGHT) -> bytes:
    """A crop (H, W, C uint8; C in 1, 3, 4) as a PNG ``height`` pixels tall, aspect kept."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(array))
    width = max(1, round(image.width * height / max(1, image.height)))
    return png_bytes(image.convert("RGBA" if image.mode == "RGBA" else "RGB").resize((width, height), Image.BILINEAR))


def similarity_histogram_png(edges: np.ndarray, same: np.ndarray, different: np.ndarray) -> bytes:
    """Same-identity vs different-identity cosine, each as a share of its pairs (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    figure, axes = plt.subplots(figsize=(7.2, 3.4), dpi=100)
    for counts, colour, label in ((different, "#d33a2c", "different identity"),
                                  (same, "#1e9e3a", "same identity")):
        total = counts.sum()
        share = counts / total if total else counts
        axes.bar(centres, share, width=width, color=colour, alpha=0.55,
                 label=f"{label} ({int(total):,} pairs)")
    used = np.flatnonzero((same + different) > 0)
    if used.size:
        axes.set_xlim(edges[max(0, used[0] - 2)], edges[min(len(edges) - 1, used[-1] + 3)])
    axes.set_xlabel("cosine similarity, query vs gallery crop of another camera")
    axes.set_ylabel("share of pairs")
    axes.legend(frameon=False, fontsize=9)
    axes.spines[["top", "right"]].set_visible(False)
    return _png_bytes(figure, plt)


def _png_bytes(figure, plt) -> bytes:
    """A finished matplotlib figure as PNG bytes; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def cosine_histogram_png(cosines: np.ndarray) -> bytes:
    """Per-row cosine between two runs (log counts: the interesting rows are the rare ones)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 3.2), dpi=100)
    values = np.asarray(cosines, np.float64)
    low = float(values.min()) if values.size else 0.0
    axes.hist(1.0 - values, bins=60, color="#2f6fd6", log=True)
    axes.set_xlabel(f"1 - cosine (row by row; lowest cosine {low:.6f})")
    axes.set_ylabel("rows")
    axes.spines[["top", "right"]].set_visible(False)
    return _png_bytes(figure, plt)


def _figures_table(figures: dict[str, Any]) -> str:
    rows = []
    for name, value in figures.items():
        shown = f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
        rows.append(f"<tr><th>{html.escape(name)}</th><td class='v'>{shown}</td></tr>")
    return "<table class='figures'>" + "".join(rows) + "</table>"


def _thumb_html(thumb: Thumb) -> str:
    caption = html.escape(thumb.caption).replace("\n", "<br>")
    if thumb.pixels is None:
        inner = "<div class='none'>no crop</div>"
    else:
        inner = f"<img alt='' src='{data_uri(thumbnail_png(thumb.pixels))}'>"
    return f"<div class='cell {thumb.kind}'>{inner}<div class='cap'>{caption}</div></div>"


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script>"
        f"</head><body><h1>{html.escape(title)}</h1><div class='sub'>{html.escape(subtitle)}</div>"
        f"{body}</body></html>"
    )


def _write(directory: str, page: str, plots: dict[str, bytes]) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, png in plots.items():
        with open(os.path.join(directory, name), "wb") as stream:
            stream.write(png)
    path = os.path.join(directory, REPORT_NAME)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(page)
    return path


def write_evaluate_report(
    directory: str, *, subtitle: str, figures: dict[str, Any], histogram_png: bytes,
    ranked: Sequence[Sequence[Thumb]], note: str = "",
) -> str:
    """``directory/report.html``: the figures, the similarity histogram and the ranked gallery."""
    gallery = []
    for row in ranked:
        cells = [_thumb_html(row[0]), "<div class='sep'></div>"] + [_thumb_html(t) for t in row[1:]]
        gallery.append("<div class='rank'>" + "".join(cells) + "</div>")
    legend = ("<div class='legend'><span style='background:#2f6fd6'></span>query"
              "<span style='background:#1e9e3a'></span>same identity"
              "<span style='background:#d33a2c'></span>different identity</div>")
    body = (
        "<h2>Cross-camera retrieval</h2>" + _figures_table(figures)
        + "<h2>Cosine similarity of query and gallery crops</h2>"
        + f"<img class='plot' alt='similarity histogram' src='{data_uri(histogram_png)}'>"
        + f"<h2>Ranked gallery: {len(ranked)} queries, their 10 most similar crops of other cameras</h2>"
        + legend + (f"<p>{html.escape(note)}</p>" if note else "") + "".join(gallery)
    )
    page = _page("osnet-beam evaluate", subtitle, body)
    return _write(directory, page, {"similarity_histogram.png": histogram_png})


def write_compare_report(
    directory: str, *, subtitle: str, figures: dict[str, Any], histogram_png: bytes,
    moved: Sequence[tuple[dict[str, Any], float, float, Optional[Thumb]]], note: str = "",
) -> str:
    """``directory/report.html``: the figures, the per-row cosine histogram, the rows that moved
    most (their key values, cosine, max abs difference and crop when the input was given)."""
    rows = []
    for key, cosine, max_abs, thumb in moved:
        crop = _thumb_html(thumb) if thumb is not None else ""
        keys = "<br>".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in key.items())
        rows.append(f"<tr><td>{crop}</td><td>{keys}</td><td>{cosine:.6f}</td><td>{max_abs:.3g}</td></tr>")
    body = (
        "<h2>Row by row</h2>" + _figures_table(figures)
        + "<h2>Cosine between the two runs' features</h2>"
        + f"<img class='plot' alt='cosine histogram' src='{data_uri(histogram_png)}'>"
        + f"<h2>The {len(moved)} rows whose features moved most</h2>"
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + "<table class='moved'><tr><th>crop</th><th>row</th><th>cosine</th><th>max abs diff</th></tr>"
        + "".join(rows) + "</table>"
    )
    page = _page("osnet-beam compare", subtitle, body)
    return _write(directory, page, {"cosine_histogram.png": histogram_png})
