"""coco_metrics against pycocotools' COCOeval on generated ground truth and detections."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from perception_rl.metrics import COCO_METRIC_NAMES, coco_metrics

CATEGORIES = (1, 3, 8)  # Non-contiguous ids, as in COCO.


def _random_box(rng):
    width, height = np.exp(rng.uniform(np.log(3), np.log(300), 2))  # small, medium and large
    x, y = rng.uniform(0, 400, 2)
    return [float(x), float(y), float(width), float(height)]


def _generate(seed, num_images=25, constant_scores=False):
    """Ground truth and detections; some images have no ground truth, some no detections."""
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(1, num_images + 1) * 7).tolist()  # unsorted, sparse
    annotations, detections = [], []
    for image_id in image_ids:
        for _ in range(rng.integers(0, 6)):
            box, category = _random_box(rng), int(rng.choice(CATEGORIES))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3] * float(rng.uniform(0.4, 1.0)),
                    "iscrowd": int(rng.random() < 0.1),
                }
            )
            for _ in range(rng.integers(0, 3)):  # Near-duplicates: true and false positives.
                jitter = rng.normal(0, 0.2, 4) * np.array(box[2:] + box[2:])  # relative to w, h
                noisy = np.maximum(np.add(box, jitter), [-np.inf, -np.inf, 0.5, 0.5])
                wrong = rng.random() < 0.2
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": int(rng.choice(CATEGORIES)) if wrong else category,
                        "bbox": noisy.tolist(),
                    }
                )
        for _ in range(rng.integers(0, 3)):  # Background false positives.
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORIES)),
                    "bbox": _random_box(rng),
                }
            )
    rng.shuffle(detections)
    for detection in detections:
        detection["score"] = (
            1.0 if constant_scores else float(rng.choice([0.25, 0.5, rng.random()]))
        )
    gt = {
        "images": [{"id": i} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": c} for c in CATEGORIES],
    }
    return gt, detections


def _pycocotools(gt, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.array(evaluator.stats[:9])
    return np.where(stats == -1, np.nan, stats)


def _ours(gt, detections):
    metrics = coco_metrics(gt, detections)
    assert tuple(metrics) == COCO_METRIC_NAMES
    return np.array(list(metrics.values()))


@pytest.mark.parametrize("constant_scores", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matches_pycocotools(seed, constant_scores):
    gt, detections = _generate(seed, constant_scores=constant_scores)
    assert not np.isnan(_ours(gt, detections)).all()
    # faster-coco-eval divides by tp + fp where pycocotools adds 2.2e-16: last-bit differences.
    np.testing.assert_allclose(
        _ours(gt, detections), _pycocotools(gt, detections), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("constant_scores", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_pycocotools_backend_is_bit_exact(seed, constant_scores):
    gt, detections = _generate(seed, constant_scores=constant_scores)
    exact = coco_metrics(gt, detections, backend="pycocotools")
    np.testing.assert_array_equal(list(exact.values()), _pycocotools(gt, detections))


def test_backends_agree_without_detections():
    gt, _ = _generate(7)
    fast, exact = (coco_metrics(gt, [], backend=b) for b in ("faster_coco_eval", "pycocotools"))
    np.testing.assert_array_equal(list(fast.values()), list(exact.values()))
    assert exact["AP"] == 0.0
    with pytest.raises(ValueError, match="backend"):
        coco_metrics(gt, [], backend="detectron")


def test_missing_score_counts_as_one():
    gt, detections = _generate(5, constant_scores=True)
    without = [{k: v for k, v in d.items() if k != "score"} for d in detections]
    np.testing.assert_array_equal(_ours(gt, without), _ours(gt, detections))


def test_unanswered_images_are_misses():
    gt, detections = _generate(6)
    answered = {d["image_id"] for d in detections}
    gt["images"].append({"id": 9999})  # An image the model never answered ...
    gt["annotations"].append(
        {
            "id": 10_000,
            "image_id": 9999,
            "category_id": 1,
            "bbox": [0.0, 0.0, 50.0, 50.0],
            "area": 2500.0,
            "iscrowd": 0,
        }
    )
    assert 9999 not in answered
    ours = coco_metrics(gt, detections)
    np.testing.assert_allclose(
        list(ours.values()), _pycocotools(gt, detections), rtol=0, atol=1e-15
    )
    assert ours["AR100"] < coco_metrics(*_generate(6))["AR100"]  # ... lowers recall.


def test_empty_detections_and_undefined_ranges():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 200, 200],
                "area": 40000,
                "iscrowd": 0,
            }
        ],
    }
    metrics = coco_metrics(gt, [])
    # Only a large object: the small / medium ranges are undefined (pycocotools' -1).
    assert np.isnan(metrics["APs"]) and np.isnan(metrics["APm"])
    assert metrics["AP"] == metrics["APl"] == metrics["AR100"] == 0.0
    perfect = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 200, 200]}])
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR1"] == 1.0


def test_inputs_are_not_mutated():
    gt, detections = _generate(7)
    gt_before, detections_before = copy.deepcopy(gt), copy.deepcopy(detections)
    coco_metrics(gt, detections)
    assert gt == gt_before and detections == detections_before
