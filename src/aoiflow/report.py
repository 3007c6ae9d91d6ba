"""Plots (ROC curve, score histograms, image panels: input, reconstruction, map, mask) and the
HTML pages over them: one run's evaluation and the demo's comparison of presets.

Plots take small plain records (scores, and a few example images as arrays) that their callers
choose and build; this module never imports the evaluation.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from aoiflow.fileio import atomic_write, atomic_write_text  # noqa: E402
from aoiflow.heatmap import COLORMAP  # noqa: E402

PAGE_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
              "table{border-collapse:collapse;margin:1em 0}"
              "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
              "img{max-width:100%;margin:4px}.note{color:#444;max-width:60em}")


def esc(value: object) -> str:
    """Any value as HTML text."""
    return html.escape(str(value))


def relative_href(target: Path, page_dir: Path) -> str:
    """URL of ``target`` relative to a page in ``page_dir`` ('/'-separated, percent-quoted), so
    the pages keep working when the whole folder is moved or copied."""
    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return quote(Path(rel).as_posix())


def link(href: str, text: object) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{esc(text)}</a>'


def html_page(title: str, body: str) -> str:
    """The one page skeleton of aoiflow's reports. ``title`` is escaped here; ``body`` is HTML
    that its caller built, escaping its own text."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head>\n<body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def write_page(path: Path, title: str, body: str) -> Path:
    path = Path(path)
    atomic_write_text(path, html_page(title, body))
    return path


def _save(fig, path: Path) -> None:
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def roc_plot(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC {title}".strip(),
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    _save(fig, path)


def histogram_plot(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal", color="tab:blue")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomalous", color="tab:red")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="anomaly score A (normalised)", ylabel="images")
    ax.legend()
    _save(fig, path)


def _show(ax, img: np.ndarray, title: str, **kw) -> None:
    ax.imshow(img, **kw)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


MAP_GAPS = {"wspace": 0.45}  # room between panels for a colour bar's ticks and label


def _show_map(ax, amap: np.ndarray, title: str, vmax: float, label: str) -> None:
    """An anomaly map from 0 to ``vmax`` with a colour bar, so the colours read as values."""
    im = ax.imshow(amap, cmap=COLORMAP, vmin=0, vmax=max(vmax, 1e-8))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=6)


@dataclass(frozen=True)
class PanelRow:
    """One example image of a panel row, all arrays at one resolution (H, W)."""

    title: str                      # above the input image
    image: np.ndarray               # (H, W, C) in [0, 1], C = 1 or 3
    reconstruction: np.ndarray      # (H, W, C) in [0, 1]
    maps: tuple[np.ndarray, ...]    # (H, W) each, one per map column, in the columns' order
    mask: np.ndarray | None = None  # bool (H, W) ground truth; None: there is none
    a: float | None = None          # anomaly score, shown above the first map when given


@dataclass(frozen=True)
class MapColumn:
    """A map column of a panel: its title, its colour bar's label and the top of its scale."""

    title: str
    bar_label: str
    vmax: float | None = None  # None: the largest value of the column's maps


@dataclass(frozen=True)
class ScoreSet:
    """Image scores of one test set, for ROC curves and histograms."""

    labels: np.ndarray  # (N,) 0 normal, 1 anomalous
    scores: np.ndarray  # (N,) anomaly score A
    threshold: float


EVAL_MAP_COLUMNS = (MapColumn("map", "map value"),)
KIND_MAP_COLUMNS = (MapColumn("L1 map", "|x − x̂|"), MapColumn("SSIM map", "1 − SSIM"))
GREY = {"cmap": "gray", "vmin": 0, "vmax": 1}


def _as_display(img: np.ndarray) -> np.ndarray:
    """(H, W, C) -> what imshow draws: (H, W) for grey, (H, W, 3) clipped to [0, 1] for colour."""
    return img[..., 0] if img.shape[2] == 1 else np.clip(img, 0, 1)


def _column_top(rows: Sequence[PanelRow], k: int, column: MapColumn) -> float:
    return column.vmax if column.vmax is not None else max(float(r.maps[k].max()) for r in rows)


def _show_mask(ax, mask: np.ndarray | None) -> None:
    if mask is None:
        ax.axis("off")
        ax.set_title("no mask", fontsize=8)
    else:
        _show(ax, mask.astype(float), "ground truth", **GREY)


def panel_plot(rows: Sequence[PanelRow], path: Path, columns: Sequence[MapColumn] = EVAL_MAP_COLUMNS) -> None:
    """Rows of input | reconstruction | one map per column | mask. Each map column has one colour
    scale for all rows (given by its bar), so colours compare across rows."""
    if not rows:
        raise ValueError("a panel needs at least one row")
    uneven = [r.title for r in rows if len(r.maps) != len(columns)]
    if uneven:
        raise ValueError(f"each panel row needs {len(columns)} map(s), one per map column; rows {uneven} differ")
    tops = [_column_top(rows, k, c) for k, c in enumerate(columns)]
    n_cols = len(columns) + 3
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols, 2.1 * len(rows)), squeeze=False,
                             gridspec_kw=MAP_GAPS)
    for ax_row, row in zip(axes, rows):
        _show(ax_row[0], _as_display(row.image), row.title, **GREY)
        _show(ax_row[1], _as_display(row.reconstruction), "reconstruction", **GREY)
        for k, (column, top) in enumerate(zip(columns, tops)):
            title = column.title + (f"  A={row.a:.2f}" if k == 0 and row.a is not None else "")
            _show_map(ax_row[2 + k], row.maps[k], title, top, column.bar_label)
        _show_mask(ax_row[-1], row.mask)
    _save(fig, path)


def html_report(eval_dir: Path, metrics: dict, title: str = "aoiflow evaluation") -> Path:
    """A single self-contained-by-reference HTML page over the eval folder's metrics and plots."""

    def fmt(v) -> str:
        return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else esc(v))

    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{fmt(v['image_auroc'])}</td><td>{v['count']}</td>"
        f"<td>{fmt(v['recall_at_threshold'])}</td></tr>"
        for k, v in metrics.get("per_defect_type", {}).items()
    )
    summary = "".join(
        f"<tr><td>{k}</td><td>{fmt(metrics.get(k))}</td></tr>"
        for k in ("image_auroc", "pixel_auroc", "f1_at_threshold", "recall_at_threshold",
                  "false_positive_rate_at_threshold", "threshold", "ms_per_image")
    )
    loc = metrics.get("localisation") or {}
    loc_rows = "".join(f"<tr><td>{k}</td><td>{fmt(v)}</td></tr>" for k, v in loc.items() if not isinstance(v, dict))
    loc_rows += "".join(
        f"<tr><td>{k}</td><td>precision {fmt(v['precision'])}, recall {fmt(v['recall'])}, F1 {fmt(v['f1'])} "
        f"({v['matched']} of {v['truth']} true regions matched, {v['predicted']} predicted)</td></tr>"
        for k, v in loc.items() if isinstance(v, dict))
    skipped = "".join(f"<li>{esc(s['path'])}: {esc(s['reason'])}</li>" for s in metrics.get("skipped", []))
    body = f"""<p>run <code>{esc(metrics.get('run', ''))}</code>, data <code>{esc(metrics.get('data', ''))}</code>,
preset <b>{esc(metrics.get('preset'))}</b>, {metrics['counts']['normal']} normal / {metrics['counts']['anomalous']} anomalous test images.</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Per defect type</h2><table><tr><th>type</th><th>image AUROC</th><th>images</th><th>recall at threshold</th></tr>{rows}</table>
{f'<h2>Localisation</h2><table>{loc_rows}</table>' if loc_rows else ''}
<div><img src="roc.png"><img src="score_hist.png"></div>
<h2>Examples</h2><img src="panel.png">
<p class="note">Map colours: the bar beside each map gives the per-pixel dissimilarity of input and
reconstruction (the run's scoring: L1 or 1 − SSIM, smoothed as the run scores); every row uses the same scale, so colours compare across rows.</p>
{f'<h2>Skipped files</h2><ul>{skipped}</ul>' if skipped else ''}"""
    return write_page(Path(eval_dir) / "report.html", title, body)


def line_report(out: Path, results: list[dict], baseline: dict[str, float], panels: Sequence[PanelRow],
                settings: dict[str, object] | None = None, timing: dict | None = None, extra_html: str = "") -> Path:
    """One HTML page comparing presets on one set: settings, table, ROC curves, histograms, panels.

    ``results``: per preset {"preset", "metrics", "train_s", "ms_b1", "scores" (a ScoreSet)}, optionally
    "report" (that run's own evaluation report.html, linked relatively) and "reused_from" (the
    preset whose trained networks it took, so its train s is calibration only) and "resumed" (a
    run from an earlier call was resumed, so train s is only what was left). ``settings``:
    label -> value, shown as given. ``timing``: how ms/frame was measured, {"warmup", "calls", "threads"}.
    ``panels``: the last preset's highest-scoring frame of each defect kind, maps as KIND_MAP_COLUMNS.
    ``extra_html``: a section placed after the results (the demo's second, varying line).
    """
    out = Path(out)
    kinds = sorted({k for r in results for k in r["metrics"]["per_defect_type"]})
    _roc_all(results, out / "roc_all.png")
    _hist_all(results, out / "hist_all.png")
    panel_plot(panels, out / "panels.png", KIND_MAP_COLUMNS)
    body = f"""<p>Frames generated, preprocessed to surface maps, {_count_words(len(results))} GANomaly presets trained and scored
on the same test frames.
Each preset's own evaluation report (metrics, localisation, example panels) is linked in the table.</p>
{_settings_table(settings)}
<h2>Results</h2>
{_results_table(results, baseline, kinds, out)}
{_line_notes(results, timing)}
{extra_html}
<h2>ROC curves</h2><img src="roc_all.png"><h2>Score histograms</h2><img src="hist_all.png">
<h2>Per defect kind: real, reconstruction, L1 map, SSIM map ({esc(results[-1]['preset'])})</h2><img src="panels.png">
<p class="note">The highest-scoring test frame of each kind. The maps are unsmoothed: L1 is |x − x̂| per pixel,
SSIM is 1 − SSIM(x, x̂) per pixel; each map column has one colour scale for all rows, given by its bar.</p>"""
    return write_page(out / "report.html", "aoiflow: LED inspection line (generated frames)", body)


def _count_words(n: int) -> str:
    return {1: "one", 2: "two", 3: "three", 4: "four"}.get(n, str(n))


def _roc_all(results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    for r in results:
        sc: ScoreSet = r["scores"]
        fpr, tpr, _ = roc_curve(sc.labels, sc.scores)
        ax.plot(fpr, tpr, lw=2, label=f"{r['preset']} ({roc_auc_score(sc.labels, sc.scores):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def _hist_all(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        sc: ScoreSet = r["scores"]
        bins = np.histogram_bin_edges(sc.scores, bins=30)
        ax.hist(sc.scores[sc.labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(sc.scores[sc.labels == 1], bins=bins, alpha=0.6, label="anomalous", color="tab:red")
        ax.axvline(sc.threshold, color="black", ls="--", lw=1)
        ax.set(title=r["preset"], xlabel="A (normalised)")
        ax.legend(fontsize=8)
    _save(fig, path)


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _settings_table(settings: dict[str, object] | None) -> str:
    if not settings:
        return ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in settings.items())
    return f"<h2>Settings</h2><table>{rows}</table>"


def _results_table(results: list[dict], baseline: dict[str, float], kinds: list[str], page_dir: Path) -> str:
    head = ("<tr><th>preset</th><th>image AUROC</th>" + "".join(f"<th>{esc(k)}</th>" for k in kinds)
            + "<th>pixel AUROC</th><th>ms/frame (batch 1, CPU)</th><th>train s</th><th>own report</th></tr>")
    body = ""
    for r in results:
        m = r["metrics"]
        own = link(relative_href(r["report"], page_dir), "report") if r.get("report") else "–"
        train = f"{r['train_s']:.0f}" + ("*" if r.get("reused_from") else "") + ("†" if r.get("resumed") else "")
        body += (f"<tr><td>{esc(r['preset'])}</td><td><b>{_num(m['image_auroc'])}</b></td>"
                 + "".join(f"<td>{_num(m['per_defect_type'].get(k, {}).get('image_auroc'))}</td>" for k in kinds)
                 + f"<td>{_num(m['pixel_auroc'])}</td><td>{r['ms_b1']:.1f}</td><td>{train}</td><td>{own}</td></tr>")
    body += ("<tr><td>baseline: |x − mean normal|</td><td>" + _num(baseline["all"]) + "</td>"
             + "".join(f"<td>{_num(baseline.get(k))}</td>" for k in kinds) + "<td>–</td>" * 4 + "</tr>")
    return f"<table>{head}{body}</table>"


def _line_notes(results: list[dict], timing: dict | None) -> str:
    """What the table's columns mean where a reader could be misled: speed and reused training."""
    notes = []
    if timing:
        notes.append(
            f"ms/frame: PyTorch on the CPU, one frame at the preset's input size (reconstruction, R, L and map), "
            f"{esc(timing['threads'])} threads as the run's config says; "
            f"{esc(timing['warmup'])} untimed warm-up calls, "
            f"then the median of {esc(timing['calls'])} timed calls, after all training and evaluation had finished. "
            "It still depends on what else the machine runs: <code>benchmarks/speed.py</code> is the reference for "
            "speed (it also times ONNX Runtime and OpenVINO).")
    for r in results:
        if r.get("reused_from"):
            notes.append(
                f"* {esc(r['preset'])} reuses the trained networks of {esc(r['reused_from'])}: the two presets train "
                "identically and differ only in scoring (see <code>train.fit_like</code>), so its train s is only "
                "the time to calibrate its scoring on the held-out normal images.")
    resumed = [esc(r["preset"]) for r in results if r.get("resumed")]
    if resumed:
        notes.append(f"† {', '.join(resumed)}: a run left in this folder by an earlier call was resumed, so train s "
                     "covers only what was left to do (nothing, when it had finished).")
    notes.append("baseline: mean absolute difference of each surface to the mean normal training surface, "
                 "no learning; it shows how hard the set is.")
    return "".join(f'<p class="note">{n}</p>' for n in notes)


def objective_plot(results: list, path: Path) -> None:
    """Validation objective of a parameter search: every trial in the order run, coloured by
    stage, with the best so far and the untuned config at its own scoring (left); the spread of
    each stage (right)."""
    fig, (ax, ax_stage) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    done = [r for r in results if r.state == "complete"]
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for stage in (1, 2, 3):
        idx = [i for i, r in enumerate(done) if r.stage == stage]
        vals = [done[i].objective for i in idx]
        if vals:
            ax.scatter(idx, vals, color=colours[stage], s=28, zorder=3, label=f"stage {stage}")
            ax_stage.boxplot(vals, positions=[stage], widths=0.5, showfliers=False)
            ax_stage.scatter(np.full(len(vals), stage), vals, color=colours[stage], s=16, zorder=3)
    ax.step(range(len(done)), np.maximum.accumulate([r.objective for r in done]) if done else [],
            where="post", color="black", lw=1, label="best so far")
    for r in done:
        if r.baseline:
            ax.axhline(r.val_auroc_base_scoring, color="grey", ls=":", lw=1, label="untuned, own scoring")
    ax.set(xlabel="trial (in the order run)", ylabel="validation AUROC", title="aoiflow tune: objective per trial")
    ax.legend(fontsize=8, loc="lower right")
    ax_stage.set(xticks=[1, 2, 3], xticklabels=["stage 1", "stage 2", "stage 3"], title="per stage")
    _save(fig, path)
