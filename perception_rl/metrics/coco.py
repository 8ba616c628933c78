"""COCO box AP / AR through faster-coco-eval (default) or pycocotools (bit-exact).

faster-coco-eval matches pycocotools detection for detection, ~10x faster; its only difference is
that it computes precision as tp / (tp + fp) where pycocotools divides by tp + fp + 2.2e-16, so a
summary number can differ in its last bit (≤ 1e-15), never in any printed digit. For numbers
that must equal pycocotools' to the bit (a paper table), pass `backend="pycocotools"` (an
optional dependency: `pip install pycocotools`).

Evaluation protocol (DESIGN.md §3, data_eval.md §2.4): every ground-truth image is evaluated,
answered or not, and a detection without a score gets 1.0, as Perception-R1 does, since a
language model emits none. With constant scores AP / AP50 / AP75 are single-operating-point
numbers (ties ranked by image id, then output order); AR is unaffected.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from perception_rl.metrics import records

# Order and names of the first nine entries of COCOeval.stats.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


BACKENDS = ("faster_coco_eval", "pycocotools")


def coco_metrics(gt: Any, detections: Any, backend: str = "faster_coco_eval") -> dict[str, float]:
    """COCO bbox AP and AR: pycocotools' `COCOeval(...).stats[:9]` (to within 1e-15, or exactly
    with `backend="pycocotools"`).

    Args:
      gt: COCO ground-truth dict (`images`, `annotations`, `categories`); boxes `[x, y, w, h]` in
        pixels, `iscrowd=1` marks crowd regions, `area` defaults to `w * h`.
      detections: list of COCO result dicts `{"image_id", "category_id", "bbox": [x, y, w, h],
        "score"?}` in original-image pixels; `score` defaults to 1.0.
      backend: "faster_coco_eval" or "pycocotools".

    Returns:
      `{name: value}` for `COCO_METRIC_NAMES`, in [0, 1]. A metric that pycocotools reports as -1
      (no ground truth in its size range) is NaN.

    Raises:
      RecordError: naming the first malformed ground-truth record, or a detection for an unknown
        image or category.
    """
    if backend not in BACKENDS:
        raise ValueError(f"coco_metrics: backend {backend!r}; expected one of {BACKENDS}.")
    truth = records.load_ground_truth(gt, with_categories=True)
    found = records.load_detections(detections, truth, with_categories=True)
    evaluate = _faster_coco_eval if backend == "faster_coco_eval" else _pycocotools
    evaluator = evaluate(_ground_truth_dict(truth), _result_dicts(found), truth.image_ids)
    stats = np.asarray(evaluator.stats[: len(COCO_METRIC_NAMES)], np.float64)
    stats[stats == -1] = np.nan
    return dict(zip(COCO_METRIC_NAMES, stats.tolist()))


def _faster_coco_eval(gt: dict, results: list[dict], image_ids: np.ndarray):
    from faster_coco_eval import COCO, COCOeval_faster  # Heavy import: only when evaluating.

    coco_gt = COCO(gt)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iouType="bbox")
    return _run(evaluator, image_ids)


def _pycocotools(gt: dict, results: list[dict], image_ids: np.ndarray):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes indexes the first result
            coco_dt = COCO()
            coco_dt.dataset = {**gt, "annotations": []}
            coco_dt.createIndex()
        return _run(COCOeval(coco_gt, coco_dt, "bbox"), image_ids)


def _run(evaluator, image_ids: np.ndarray):
    evaluator.params.imgIds = sorted(image_ids.tolist())  # Unanswered images are misses.
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _ground_truth_dict(truth: records.GroundTruth) -> dict:
    """A fresh COCO dict: the evaluator mutates its input, and ids 1..A are safe match markers."""
    return {
        "images": [{"id": i} for i in truth.image_ids.tolist()],
        "categories": [{"id": c} for c in truth.category_ids.tolist()],
        "annotations": [
            {
                "id": k + 1,
                "image_id": image,
                "category_id": category,
                "bbox": box,
                "area": area,
                "iscrowd": int(crowd),
            }
            for k, (image, category, box, area, crowd) in enumerate(
                zip(
                    truth.image_id.tolist(),
                    truth.category_id.tolist(),
                    truth.boxes.tolist(),
                    truth.area.tolist(),
                    truth.iscrowd.tolist(),
                )
            )
        ],
    }


def _result_dicts(found: records.Detections) -> list[dict]:
    return [
        {"image_id": image, "category_id": category, "bbox": box, "score": score}
        for image, category, box, score in zip(
            found.image_id.tolist(),
            found.category_id.tolist(),
            found.boxes.tolist(),
            found.scores.tolist(),
        )
    ]
