"""Plots (ROC curve, score histograms, image panels: input, reconstruction, map, mask) and the
HTML pages over them: one run's evaluation and the demo's comparison of presets."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from aoiflow.fileio import atomic_write, atomic_write_text  # noqa: E402
from aoiflow.heatmap import COLORMAP  # noqa: E402

if TYPE_CHECKING:
    from aoiflow.evaluate import Evaluation

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


def _as_display(t) -> np.ndarray:
    arr = t.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else np.clip(arr, 0, 1)


def panel_plot(ev: "Evaluation", path: Path, per_kind: int = 1, max_rows: int = 8) -> None:
    """Rows of input | reconstruction | anomaly map (one colour scale for all rows) | mask: the
    highest-scoring image of each defect type plus the median normal image."""
    rows: list[int] = []
    kinds = sorted({s.defect_type for s in ev.samples})
    for kind in kinds:
        idx = [i for i, s in enumerate(ev.samples) if s.defect_type == kind]
        idx.sort(key=lambda i: ev.a[i])
        rows += [idx[len(idx) // 2]] if kind == "good" else idx[-per_kind:]
    rows = rows[:max_rows]
    vmax = float(ev.maps.max()) if ev.maps.numel() else 1.0
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.1 * len(rows)), squeeze=False, gridspec_kw=MAP_GAPS)
    for r, i in enumerate(rows):
        s = ev.samples[i]
        grey = dict(cmap="gray", vmin=0, vmax=1)
        _show(axes[r, 0], _as_display(ev.images[i]), f"{s.defect_type}: {s.path.name}", **grey)
        _show(axes[r, 1], _as_display(ev.reconstructions[i]), "reconstruction", **grey)
        _show_map(axes[r, 2], ev.maps[i, 0].numpy(), f"map  A={ev.a[i]:.2f}", vmax, "map value")
        mask = ev.masks[i]
        if mask is None:
            axes[r, 3].axis("off")
            axes[r, 3].set_title("no mask", fontsize=8)
        else:
            _show(axes[r, 3], mask.astype(float), "ground truth", cmap="gray", vmin=0, vmax=1)
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


def line_report(out: Path, results: list[dict], baseline: dict[str, float],
                settings: dict[str, object] | None = None, timing: dict | None = None) -> Path:
    """One HTML page comparing presets on one set: settings, table, ROC curves, histograms, panels.

    ``results``: per preset {"preset", "metrics", "train_s", "ms_b1", "evaluation"}, optionally
    "report" (that run's own evaluation report.html, linked relatively) and "reused_from" (the
    preset whose trained networks it took, so its train s is calibration only) and "resumed" (a
    run from an earlier call was resumed, so train s is only what was left). ``settings``:
    label -> value, shown as given. ``timing``: how ms/frame was measured, {"warmup", "calls", "threads"}.
    """
    out = Path(out)
    kinds = sorted({k for r in results for k in r["metrics"]["per_defect_type"]})
    _roc_all(results, out / "roc_all.png")
    _hist_all(results, out / "hist_all.png")
    _kind_panels(results[-1]["evaluation"], kinds, out / "panels.png")
    body = f"""<p>Frames generated, preprocessed to surface maps, three GANomaly presets trained and scored
on the same test frames.
Each preset's own evaluation report (metrics, localisation, example panels) is linked in the table.</p>
{_settings_table(settings)}
<h2>Results</h2>
{_results_table(results, baseline, kinds, out)}
{_line_notes(results, timing)}
<h2>ROC curves</h2><img src="roc_all.png"><h2>Score histograms</h2><img src="hist_all.png">
<h2>Per defect kind: real, reconstruction, L1 map, SSIM map ({esc(results[-1]['preset'])})</h2><img src="panels.png">
<p class="note">The highest-scoring test frame of each kind. The maps are unsmoothed: L1 is |x − x̂| per pixel,
SSIM is 1 − SSIM(x, x̂) per pixel; each map column has one colour scale for all rows, given by its bar.</p>"""
    return write_page(out / "report.html", "aoiflow: LED inspection line (generated frames)", body)


def _roc_all(results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    for r in results:
        ev = r["evaluation"]
        labels = np.array([s.label for s in ev.samples])
        fpr, tpr, _ = roc_curve(labels, ev.a)
        ax.plot(fpr, tpr, lw=2, label=f"{r['preset']} ({roc_auc_score(labels, ev.a):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def _hist_all(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        ev = r["evaluation"]
        labels = np.array([s.label for s in ev.samples])
        bins = np.histogram_bin_edges(ev.a, bins=30)
        ax.hist(ev.a[labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(ev.a[labels == 1], bins=bins, alpha=0.6, label="anomalous", color="tab:red")
        ax.axvline(ev.threshold, color="black", ls="--", lw=1)
        ax.set(title=r["preset"], xlabel="A (normalised)")
        ax.legend(fontsize=8)
    _save(fig, path)


def _top_of_each_kind(ev: "Evaluation", kinds: list[str]) -> list[int]:
    rows = []
    for kind in kinds:
        idx = [i for i, s in enumerate(ev.samples) if s.defect_type == kind]
        if idx:
            rows.append(max(idx, key=lambda i: ev.a[i]))
    return rows


def _kind_panels(ev: "Evaluation", kinds: list[str], path: Path) -> None:
    """Per defect kind, its highest-scoring frame: input | reconstruction | L1 map | SSIM map | mask.
    Each map column shares one colour scale, so rows compare."""
    from aoiflow.scoring import anomaly_map

    rows = _top_of_each_kind(ev, kinds)
    l1 = [anomaly_map(ev.images[i : i + 1], ev.reconstructions[i : i + 1], "l1")[0, 0].numpy() for i in rows]
    ss = [anomaly_map(ev.images[i : i + 1], ev.reconstructions[i : i + 1], "ssim")[0, 0].numpy() for i in rows]
    l1_max, ss_max = max(float(m.max()) for m in l1), max(float(m.max()) for m in ss)
    grey = dict(cmap="gray", vmin=0, vmax=1)
    fig, axes = plt.subplots(len(rows), 5, figsize=(12, 2.1 * len(rows)), squeeze=False, gridspec_kw=MAP_GAPS)
    for row, i in enumerate(rows):
        _show(axes[row, 0], _as_display(ev.images[i]), ev.samples[i].defect_type, **grey)
        _show(axes[row, 1], _as_display(ev.reconstructions[i]), "reconstruction", **grey)
        _show_map(axes[row, 2], l1[row], "L1 map", l1_max, "|x − x̂|")
        _show_map(axes[row, 3], ss[row], "SSIM map", ss_max, "1 − SSIM")
        m = ev.masks[i]
        if m is None:
            axes[row, 4].axis("off")
            axes[row, 4].set_title("no mask", fontsize=8)
        else:
            _show(axes[row, 4], m.astype(float), "ground truth", **grey)
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
