"""Plots: ROC curve, score histograms, and image panels (input, reconstruction, map, mask)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from aoiflow.fileio import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from aoiflow.evaluate import Evaluation


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


def _as_display(t) -> np.ndarray:
    arr = t.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else np.clip(arr, 0, 1)


def panel_plot(ev: "Evaluation", path: Path, per_kind: int = 1, max_rows: int = 8) -> None:
    """Rows of input | reconstruction | anomaly map | mask: the highest-scoring image of each defect
    type plus the median normal image."""
    rows: list[int] = []
    kinds = sorted({s.defect_type for s in ev.samples})
    for kind in kinds:
        idx = [i for i, s in enumerate(ev.samples) if s.defect_type == kind]
        idx.sort(key=lambda i: ev.a[i])
        rows += [idx[len(idx) // 2]] if kind == "good" else idx[-per_kind:]
    rows = rows[:max_rows]
    vmax = float(ev.maps.max()) if ev.maps.numel() else 1.0
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        s = ev.samples[i]
        grey = dict(cmap="gray", vmin=0, vmax=1)
        _show(axes[r, 0], _as_display(ev.images[i]), f"{s.defect_type}: {s.path.name}", **grey)
        _show(axes[r, 1], _as_display(ev.reconstructions[i]), "reconstruction", **grey)
        _show(axes[r, 2], ev.maps[i, 0].numpy(), f"map  A={ev.a[i]:.2f}", cmap="inferno", vmin=0, vmax=vmax)
        mask = ev.masks[i]
        if mask is None:
            axes[r, 3].axis("off")
            axes[r, 3].set_title("no mask", fontsize=8)
        else:
            _show(axes[r, 3], mask.astype(float), "ground truth", cmap="gray", vmin=0, vmax=1)
    _save(fig, path)


def html_report(eval_dir: Path, metrics: dict, title: str = "aoiflow evaluation") -> Path:
    """A single self-contained-by-reference HTML page over the eval folder's metrics and plots."""
    import html

    def fmt(v) -> str:
        return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{fmt(v['image_auroc'])}</td><td>{v['count']}</td>"
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
    skipped = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>" for s in metrics.get("skipped", []))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%;margin:4px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>run <code>{html.escape(str(metrics.get('run', '')))}</code>, data <code>{html.escape(str(metrics.get('data', '')))}</code>,
preset <b>{html.escape(str(metrics.get('preset')))}</b>, {metrics['counts']['normal']} normal / {metrics['counts']['anomalous']} anomalous test images.</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Per defect type</h2><table><tr><th>type</th><th>image AUROC</th><th>images</th><th>recall at threshold</th></tr>{rows}</table>
{f'<h2>Localisation</h2><table>{loc_rows}</table>' if loc_rows else ''}
<div><img src="roc.png"><img src="score_hist.png"></div>
<h2>Examples</h2><img src="panel.png">
{f'<h2>Skipped files</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>"""
    path = Path(eval_dir) / "report.html"
    atomic_write(path, lambda p: p.write_text(page))
    return path


def line_report(out: Path, results: list[dict], baseline: dict[str, float]) -> Path:
    """One HTML page comparing presets on one set: table, ROC curves, histograms, image panels.

    ``results``: per preset {"preset", "metrics", "train_s", "ms_b1", "evaluation"}.
    """
    import html

    from aoiflow.scoring import anomaly_map

    out = Path(out)
    kinds = sorted({k for r in results for k in r["metrics"]["per_defect_type"]})
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    axes = [ax]
    for r in results:
        ev = r["evaluation"]
        labels = np.array([s.label for s in ev.samples])
        fpr, tpr, _ = roc_curve(labels, ev.a)
        axes[0].plot(fpr, tpr, lw=2, label=f"{r['preset']} ({roc_auc_score(labels, ev.a):.3f})")
    axes[0].plot([0, 1], [0, 1], "--", color="grey", lw=1)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes[0].legend(loc="lower right", fontsize=8)
    _save(fig, out / "roc_all.png")

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
    _save(fig, out / "hist_all.png")

    ref = results[-1]["evaluation"]  # panels from the last preset (SSIM-SSIM in the demo)
    rows = []
    for kind in kinds:
        idx = [i for i, s in enumerate(ref.samples) if s.defect_type == kind]
        rows.append(max(idx, key=lambda i: ref.a[i]))
    fig, axes = plt.subplots(len(rows), 5, figsize=(10, 2.1 * len(rows)), squeeze=False)
    for row, i in enumerate(rows):
        x, xh = ref.images[i : i + 1], ref.reconstructions[i : i + 1]
        l1 = anomaly_map(x, xh, "l1")[0, 0].numpy()
        ss = anomaly_map(x, xh, "ssim")[0, 0].numpy()
        grey = dict(cmap="gray", vmin=0, vmax=1)
        _show(axes[row, 0], _as_display(ref.images[i]), f"{ref.samples[i].defect_type}", **grey)
        _show(axes[row, 1], _as_display(ref.reconstructions[i]), "reconstruction", **grey)
        _show(axes[row, 2], l1, "L1 map", cmap="inferno")
        _show(axes[row, 3], ss, "SSIM map", cmap="inferno")
        m = ref.masks[i]
        _show(axes[row, 4], np.zeros_like(l1) if m is None else m.astype(float), "ground truth", **grey)
    _save(fig, out / "panels.png")

    def f(v) -> str:
        return "–" if v is None else f"{v:.3f}"

    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    body = "".join(
        f"<tr><td>{html.escape(r['preset'])}</td><td><b>{f(r['metrics']['image_auroc'])}</b></td>"
        + "".join(f"<td>{f(r['metrics']['per_defect_type'].get(k, {}).get('image_auroc'))}</td>" for k in kinds)
        + f"<td>{f(r['metrics']['pixel_auroc'])}</td><td>{r['ms_b1']:.1f}</td><td>{r['train_s']:.0f}</td></tr>"
        for r in results)
    body += (f"<tr><td>baseline: |x − mean normal|</td><td>{f(baseline['all'])}</td>"
             + "".join(f"<td>{f(baseline.get(k))}</td>" for k in kinds) + "<td>–</td><td>–</td><td>–</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>aoiflow LED line</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px}}img{{max-width:100%;margin:6px 0}}</style></head><body>
<h1>aoiflow: LED inspection line (generated frames)</h1>
<p>Frames generated, preprocessed to surface maps, three GANomaly presets trained and scored on the same test frames.
Per-run details: <code>runs/&lt;preset&gt;/eval/report.html</code>.</p>
<table><tr><th>preset</th><th>image AUROC</th>{head}<th>pixel AUROC</th><th>ms/frame (batch 1, CPU)</th><th>train s</th></tr>{body}</table>
<h2>ROC curves</h2><img src="roc_all.png"><h2>Score histograms</h2><img src="hist_all.png">
<h2>Per defect kind: real, reconstruction, L1 map, SSIM map ({html.escape(results[-1]['preset'])})</h2><img src="panels.png">
</body></html>"""
    path = out / "report.html"
    atomic_write(path, lambda p: p.write_text(page))
    return path


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
