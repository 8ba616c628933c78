"""The eval gallery: the worst and best examples by reward, drawn with their boxes.

Ground truth green (ignore regions dotted), predictions red, DIP-R1's look boxes orange dashed;
OCR texts under each image. Matplotlib's object API with the Agg canvas, so no display or
global pyplot state is touched.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perception_rl.eval.predictions import Record

Example = dict[str, Any]


def draw_gallery(
    path: pathlib.Path, records: Sequence[Record], source, positions: Mapping[int, int], size: int
) -> pathlib.Path | None:
    """PNG of the `size` lowest- and highest-reward examples; None when nothing is ranked.

    Args:
      path: the PNG to write.
      records: prediction records with `image_id`, `prediction`, `ground_truth` and `reward`.
      source: the split's random-access examples (for the pixels).
      positions: image_id -> position in `source`.
      size: examples per row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = sorted(
        (r for r in records if isinstance(r.get("reward"), (int, float))), key=lambda r: r["reward"]
    )
    if not ranked or size < 1:
        return None
    size = min(size, len(ranked))
    rows = {"worst": ranked[:size], "best": ranked[::-1][:size]}
    # Constrained layout reserves each caption's height, so captions never overprint the
    # next row; the legend sits in its own band at the bottom.
    figure = Figure(figsize=(3.2 * size, 8.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, size, squeeze=False)
    for row, (name, chosen) in enumerate(rows.items()):
        for column, record in enumerate(chosen):
            _draw(axes[row][column], source[positions[record["image_id"]]], record, name)
    figure.legend(handles=_legend_handles(), loc="outside lower center", ncols=4, fontsize=8)
    figure.savefig(path, dpi=100)
    return path


def _legend_handles() -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=color, linestyle=line, linewidth=1.5, label=label)
        for _, color, line, label in _STYLES
    ]


# (prediction / ground-truth key, colour, line style, legend label) of the drawn boxes.
_STYLES = (
    ("truth:boxes", "lime", "-", "ground truth"),
    ("truth:ignore_boxes", "lime", ":", "ignore region"),
    ("prediction:boxes", "red", "-", "prediction"),
    ("prediction:look", "orange", "--", "look box (DIP)"),
)


def _draw(ax, example: Example, record: Record, rank: str) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(example["image"])
    parts = {"truth": record.get("ground_truth", {}), "prediction": record["prediction"]}
    truth, prediction = parts["truth"], parts["prediction"]
    for source_key, color, line, _ in _STYLES:
        part, key = source_key.split(":")
        boxes = parts[part].get(key, ())
        for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
            ax.add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    edgecolor=color,
                    linestyle=line,
                    linewidth=1.5,
                )
            )
    query = _short(str(record.get("query") or ""), lines=1)
    ax.set_title(
        f"{rank}: id {record['image_id']}, reward {record['reward']:.2f}\n{query}", fontsize=8
    )
    if "text" in prediction:  # OCR: the texts are the prediction.
        ax.set_xlabel(
            _short(f"pred: {prediction['text']}\ngt: {truth.get('text', '')}"), fontsize=7
        )
    elif "boxes" in truth:
        ax.set_xlabel(
            f"gt {len(truth['boxes'])} boxes, pred {len(prediction.get('boxes', ()))}", fontsize=8
        )
    ax.set_xticks([])
    ax.set_yticks([])


def _short(text: str, width: int = 40, lines: int = 4) -> str:
    """At most `lines` lines of at most `width` characters (long OCR pages, label sets)."""
    return "\n".join(row[:width] for row in text.split("\n")[:lines])
