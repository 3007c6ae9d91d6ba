"""Localisation and pre-label quality of evaluated runs, from their RUN/eval/metrics.json.

    .venv/bin/python benchmarks/localisation.py runs/bench/*/* runs/led/runs/*

Run after benchmarks/real_data.py and benchmarks/led_line.py (which train and evaluate); this
prints, per run: pixel AUROC, PRO to 30 % FPR, region precision/recall/F1 at IoU 0.1 and 0.5,
box precision/recall at IoU 0.5 (box ground truth), and the edits per image a reviewer makes
with the pre-labels against drawing every region from scratch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def row(run: Path) -> str:
    m = json.loads((run / "eval" / "metrics.json").read_text())
    loc = m.get("localisation", {})
    r1, r5, b = loc.get("regions_iou_0.1", {}), loc.get("regions_iou_0.5", {}), loc.get("boxes_iou_0.5", {})
    with_pl = loc.get("edits_per_image_with_prelabels", loc.get("box_edits_per_image_with_prelabels"))
    scratch = loc.get("edits_per_image_from_scratch", loc.get("box_edits_per_image_from_scratch"))
    return (f"| {run.parent.parent.name if run.parent.name == 'runs' else run.parent.name} | {run.name} | "
            f"{fmt(m.get('pixel_auroc'))} | {fmt(loc.get('pro_30'))} | "
            f"{fmt(r1.get('precision'))} / {fmt(r1.get('recall'))} / {fmt(r1.get('f1'))} | "
            f"{fmt(r5.get('precision'))} / {fmt(r5.get('recall'))} / {fmt(r5.get('f1'))} | "
            f"{fmt(b.get('precision'))} / {fmt(b.get('recall'))} | {fmt(with_pl)} vs {fmt(scratch)} |")


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:] if (Path(p) / "eval" / "metrics.json").is_file()]
    if not runs:
        sys.exit("give run folders that `aoiflow test` has evaluated (RUN/eval/metrics.json)")
    print("| set | preset | pixel AUROC | PRO 30 % | regions IoU≥0.1 P / R / F1 | regions IoU≥0.5 P / R / F1 | "
          "boxes IoU≥0.5 P / R | edits/image: pre-labels vs scratch |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main()
