"""Plots and the HTML page of a supervised evaluation, in the style of ``aoiflow.report``.

Takes small plain records (a metrics dict, a confusion matrix, a few example arrays); never
imports the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aoiflow.report import GREY, _as_display, _save, esc, plt, write_page


@dataclass(frozen=True)
class ExampleRow:
    """One example image at the model size."""

    title: str
    image: np.ndarray        # (S, S, C) in [0, 1]
    truth: np.ndarray        # (S, S) class indices
    predicted: np.ndarray    # (S, S) class indices of the kept regions
    defect_prob: np.ndarray  # (S, S) 1 - background probability


def _class_colours(n: int):
    """A colour map of n + 1 discrete colours, background black."""
    from matplotlib.colors import ListedColormap

    base = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return ListedColormap([(0, 0, 0, 1)] + [base(i % base.N) for i in range(n)])


def confusion_plot(matrix: np.ndarray, kinds: Sequence[str], path: Path) -> None:
    """Image counts, true kind (rows) against predicted kind (columns), each cell annotated."""
    matrix = np.asarray(matrix)
    side = 1.2 + 0.55 * len(kinds)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    ax.set_xticks(range(len(kinds)), labels=list(kinds), rotation=45, ha="right")
    ax.set_yticks(range(len(kinds)), labels=list(kinds))
    ax.set(xlabel="predicted kind", ylabel="true kind", title="images by kind")
    top = matrix.max() if matrix.size else 0
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=8,
                color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    _save(fig, path)


def examples_plot(rows: Sequence[ExampleRow], class_names: Sequence[str], path: Path) -> None:
    """Rows of image | truth classes | predicted classes | defect probability, one colour per class."""
    if not rows:
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no images", ha="center")
        _save(fig, path)
        return
    cmap = _class_colours(len(class_names))
    scale = {"cmap": cmap, "vmin": -0.5, "vmax": len(class_names) + 0.5, "interpolation": "nearest"}
    fig, axes = plt.subplots(len(rows), 4, figsize=(9.6, 2.3 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = ((_as_display(row.image), row.title, GREY), (row.truth, "truth", scale),
                  (row.predicted, "predicted", scale), (row.defect_prob, "defect probability",
                                                        {"cmap": "magma", "vmin": 0, "vmax": 1}))
        for ax, (img, title, kw) in zip(ax_row, panels):
            ax.imshow(img, **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k + 1)) for k in range(len(class_names))]
    fig.legend(handles, list(class_names), loc="lower center", ncol=min(len(class_names), 6), fontsize=8)
    _save(fig, path)


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else esc(v))


def html_report(out: Path, metrics: dict, title: str = "aoiflow supervised evaluation") -> Path:
    """report.html over the evaluation folder's metrics.json, confusion.png and examples.png."""
    pixel, regions, image = metrics["pixel"], metrics["regions_iou_0.5"], metrics["image"]
    class_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{_fmt(v['iou'])}</td><td>{_fmt(v['f1'])}</td><td>{_fmt(v['precision'])}</td>"
        f"<td>{_fmt(v['recall'])}</td><td>{v['pixels']}</td>"
        + (f"<td>{_fmt(regions['per_class'][name]['precision'])}</td><td>{_fmt(regions['per_class'][name]['recall'])}"
           f"</td><td>{regions['per_class'][name]['matched']} of {regions['per_class'][name]['truth']}</td>"
           if name in regions["per_class"] else "<td>–</td>" * 3) + "</tr>"
        for name, v in pixel["per_class"].items())
    summary = "".join(f"<tr><td>{esc(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in (
        ("pixel mean IoU (defect kinds)", pixel["mean_iou"]), ("pixel mean F1 (defect kinds)", pixel["mean_f1"]),
        ("region precision (IoU ≥ 0.5)", regions["all"]["precision"]),
        ("region recall (IoU ≥ 0.5)", regions["all"]["recall"]),
        ("image accuracy (defective = any region)", image["accuracy"]), ("image AUROC", image["auroc"]),
        ("image kind accuracy", image["kind_accuracy"]), ("ms per image", metrics.get("ms_per_image"))))
    kinds = metrics["confusion"]["kinds"]
    matrix_rows = "".join(f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                          for k, row in zip(kinds, metrics["confusion"]["matrix"]))
    unknown = metrics.get("unknown_classes") or []
    unknown_note = (f'<p class="note">Classes the model does not know (their pixels count as missed): '
                    f'{esc(", ".join(unknown))}</p>' if unknown else "")
    skipped = "".join(f"<li>{esc(s['path'])}: {esc(s['reason'])}</li>" for s in metrics.get("skipped", []))
    counts, settings = metrics["counts"], metrics.get("settings", {})
    body = f"""<p>model <code>{esc(metrics.get('sup', ''))}</code> ({esc(metrics.get('model_version', ''))}),
data <code>{esc(metrics.get('data', ''))}</code>: {counts['images']} images, {counts['with_defects']} with defects,
{counts['without_defects']} without; scored at {esc(metrics.get('image_size'))} px.</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Per class</h2><table><tr><th>class</th><th>pixel IoU</th><th>pixel F1</th><th>pixel precision</th>
<th>pixel recall</th><th>true pixels</th><th>region precision</th><th>region recall</th><th>regions matched</th></tr>
{class_rows}</table>
<h2>Images by kind</h2><table><tr><th>true \\ predicted</th>{''.join(f'<th>{esc(k)}</th>' for k in kinds)}</tr>
{matrix_rows}</table><img src="confusion.png">
<h2>Examples</h2><img src="examples.png">
<p class="note">Regions: connected areas of one kind in the predicted class map with at least
{esc(settings.get('min_region_area'))} model pixels and a mean probability of their kind of at least
{esc(settings.get('min_confidence'))}; pixel metrics use the map of these regions. An image is predicted
defective when it has any region; its kind is the kind with the most region pixels (the true kind: the most
labelled pixels). The image score for the AUROC is the largest defect probability (1 − background) of any pixel.
A region matches a labelled region of the same kind at IoU ≥ 0.5, one to one. Per-image results:
<a href="predictions.csv">predictions.csv</a>.</p>
{unknown_note}
{f'<h2>Skipped files</h2><ul>{skipped}</ul>' if skipped else ''}"""
    return write_page(Path(out) / "report.html", title, body)
