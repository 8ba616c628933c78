"""crowd_metrics against independent transliterations of the official evaluation scripts.

`_CrowdHumanReference` follows CrowdDet's `lib/evaluate` (Purkialo/CrowdDet: `APMRToolkits/
image.py` `clip_all_boader` + `compare_caltech`, `database.py` `compare` / `eval_MR` /
`eval_AP`, `compute_JI.py` + `JIToolkits/JI_tools.py`) statement by statement, with per-object
Python loops; its maximum-weight matching is networkx's (the same blossom algorithm as
CrowdDet's `matching.py`). `_cityperson_reference_mr` follows cvgroup-njust/CityPersons
`eval_MR_multisetup.py` (`_prepare`, `evaluateImg`, `accumulate`, `summarize`, setup 0).
Random cases put boxes past the image border, make FPPI reach 0.01 / 0.1 / 1.0 exactly
(100 images) and tie scores.
"""

import math

import networkx as nx
import numpy as np
import pytest

from perception_rl.metrics import crowd_metrics

MR_REF = [0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000]


# ------------------------------------------------------------------ CrowdHuman (CrowdDet)
def _clip_boundary(boxes, height, width):
    boxes = boxes.copy()
    boxes[:, 0] = np.minimum(np.maximum(boxes[:, 0], 0), width - 1)
    boxes[:, 1] = np.minimum(np.maximum(boxes[:, 1], 0), height - 1)
    boxes[:, 2] = np.maximum(np.minimum(boxes[:, 2], width), 0)
    boxes[:, 3] = np.maximum(np.minimum(boxes[:, 3], height), 0)
    return boxes


def _overlap(d, g, if_iou):
    eps = 1e-6
    iw = min(d[2], g[2]) - max(d[0], g[0])
    ih = min(d[3], g[3]) - max(d[1], g[1])
    inter = max(0, iw) * max(0, ih)
    dtarea = (d[2] - d[0]) * (d[3] - d[1])
    if if_iou:
        gtarea = (g[2] - g[0]) * (g[3] - g[1])
        return inter / (dtarea + gtarea - inter + eps)
    return inter / (dtarea + eps)


def _ioa_clamped(d, g):  # JI_tools.compute_ioa_matrix clamps the detection area at 0.
    eps = 1e-6
    iw = min(d[2], g[2]) - max(d[0], g[0])
    ih = min(d[3], g[3]) - max(d[1], g[1])
    inter = max(0, iw) * max(0, ih)
    return inter / (max(d[2] - d[0], 0) * max(d[3] - d[1], 0) + eps)


class _CrowdHumanReference:
    """images: list of dicts {width, height, gt: [(x1, y1, x2, y2, tag)], dt: [(x1..y2, s)]}."""

    def __init__(self, images):
        self.images = []
        for image in images:
            gt = np.array(image["gt"], np.float64).reshape(-1, 5)
            dt = np.array(image["dt"], np.float64).reshape(-1, 5)
            h, w = image["height"], image["width"]
            # Database.loadData: clip_all_boader on both after loading the detections.
            gt = np.hstack([_clip_boundary(gt[:, :4], h, w), gt[:, 4:]])
            dt = np.hstack([_clip_boundary(dt[:, :4], h, w), dt[:, 4:]])
            self.images.append((gt, dt, h, w))
        self.gt_num = sum(len(g) for g, _, _, _ in self.images)
        self.ign_num = sum(int((g[:, -1] == -1).sum()) for g, _, _, _ in self.images)
        self.image_num = len(self.images)

    def compare(self, thres=0.5):
        scorelist = []
        for gtboxes, dtboxes, _, _ in self.images:
            if not len(dtboxes):
                continue
            gt_matched = np.zeros(len(gtboxes))
            dtboxes = sorted(dtboxes, key=lambda x: x[-1], reverse=True)
            gtboxes = sorted(gtboxes, key=lambda x: x[-1], reverse=True)
            for dt in dtboxes:
                maxpos, maxiou = -1, thres
                for j, gt in enumerate(gtboxes):
                    if gt_matched[j] == 1:
                        continue
                    if gt[-1] > 0:
                        overlap = _overlap(dt, gt, True)
                        if overlap > maxiou:
                            maxiou, maxpos = overlap, j
                    else:
                        if maxpos >= 0:
                            break
                        overlap = _overlap(dt, gt, False)
                        if overlap > thres:
                            maxiou, maxpos = overlap, j
                if maxpos >= 0:
                    if gtboxes[maxpos][-1] > 0:
                        gt_matched[maxpos] = 1
                        scorelist.append((dt, 1))
                else:
                    scorelist.append((dt, 0))
        scorelist.sort(key=lambda x: x[0][-1], reverse=True)
        return scorelist

    def eval_mr(self, scorelist):
        def _find_gt(lst, target):
            for idx, item in enumerate(lst):
                if item >= target:
                    return idx
            return len(lst) - 1

        tp, fp = 0.0, 0.0
        fppi_x, fppi_y = [], []
        for item in scorelist:
            if item[1] == 1:
                tp += 1.0
            elif item[1] == 0:
                fp += 1.0
            fn = (self.gt_num - self.ign_num) - tp
            fppi_x.append(fp / self.image_num)
            fppi_y.append(1.0 - tp / (tp + fn))
        score = [fppi_y[_find_gt(fppi_x, pos)] for pos in MR_REF if _find_gt(fppi_x, pos) >= 0]
        with np.errstate(divide="ignore"):
            return float(np.exp(np.log(np.array(score)).mean()))

    def eval_ap(self, scorelist):
        tp, fp = 0.0, 0.0
        rp_x, rp_y = [], []
        total_gt = self.gt_num - self.ign_num
        for item in scorelist:
            if item[1] == 1:
                tp += 1.0
            elif item[1] == 0:
                fp += 1.0
            rp_x.append(tp / total_gt)
            rp_y.append(tp / (tp + fp))
        area = 0
        for i in range(1, len(rp_x)):
            area += (rp_x[i] - rp_x[i - 1]) * (rp_y[i - 1] + rp_y[i]) / 2
        return area

    def eval_ji(self, bm_thresh=0.5):
        res_ji = []
        for i in range(10):
            score_thr = 1e-1 * i
            ratios, counted = [], 0
            for gt_boxes, dt_all, _, _ in self.images:
                dt_boxes = dt_all[dt_all[:, -1] > score_thr][:, :-1]
                gt_tag = gt_boxes[:, -1] != -1
                positives, ignores = gt_boxes[gt_tag, :4], gt_boxes[~gt_tag, :4]
                matches = _max_weight_matching(dt_boxes, positives, bm_thresh)
                unmatched_dt = sorted(set(range(len(dt_boxes))) - {d for d, _ in matches})
                unmatched_gt = sorted(set(range(len(positives))) - {g for _, g in matches})
                num_ignore_dt = _get_ignores(dt_boxes[unmatched_dt], ignores, bm_thresh)
                num_ignore_gt = _get_ignores(positives[unmatched_gt], ignores, bm_thresh)
                k = len(matches)
                m = gt_tag.sum() - num_ignore_gt
                n = dt_boxes.shape[0] - num_ignore_dt
                ratios.append(k / (m + n - k + 1e-6))
                counted += int(n != 0 or m != 0)
            res_ji.append(np.sum(ratios) / counted)
        return max(res_ji)


def _max_weight_matching(dt_boxes, gt_boxes, thr):
    if len(dt_boxes) < 1 or len(gt_boxes) < 1:
        return []
    graph = nx.Graph()
    for i, d in enumerate(dt_boxes):
        for j, g in enumerate(gt_boxes):
            iou = _overlap(d, g, True)
            if iou > thr:
                graph.add_edge(("d", i), ("g", j), weight=iou)
    pairs = nx.max_weight_matching(graph)
    return [(a[1], b[1]) if a[0] == "d" else (b[1], a[1]) for a, b in pairs]


def _get_ignores(boxes, regions, thr):
    if not regions.size or not len(boxes):
        return 0
    return sum(max(_ioa_clamped(b, r) for r in regions) > thr for b in boxes)


# ----------------------------------------------------------- CityPersons (Reasonable setup)
def _cityperson_reference_mr(gt_json, dt_json):
    """eval_MR_multisetup.py, id_setup 0, one category; returns the summarised MR."""
    ht_rng, vis_rng, exp_filter, max_det = [50, 1e5**2], [0.65, 1e5**2], 1.25, 1000
    img_ids = sorted(i["id"] for i in gt_json["images"])
    evals = []
    for img_id in img_ids:
        gt = [dict(a) for a in gt_json["annotations"] if a["image_id"] == img_id]
        dt = [dict(d) for d in dt_json if d["image_id"] == img_id]
        for g in gt:
            g["ignore"] = g.get("iscrowd", 0)
            g["height"], g["vis_ratio"] = g["bbox"][3], g.get("vis_ratio", 1.0)
            if not (ht_rng[0] <= g["height"] <= ht_rng[1] and vis_rng[0] <= g["vis_ratio"]):
                g["ignore"] = 1
        for d in dt:
            d["height"] = d["bbox"][3]
        if len(gt) == 0 and len(dt) == 0:
            continue
        gt = [gt[i] for i in np.argsort([g["ignore"] for g in gt], kind="mergesort")]
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")[:max_det]]
        dt = [
            d
            for d in dt
            if d["height"] >= ht_rng[0] / exp_filter and d["height"] < ht_rng[1] * exp_filter
        ]
        ious = _cityperson_iou(dt, gt)
        gtm, dtm, dt_ig = np.zeros(len(gt)), np.zeros(len(dt)), np.zeros(len(dt))
        gt_ig = np.array([g["ignore"] for g in gt])
        for dind in range(len(dt)):
            bst_oa, bstg, bstm = min(0.5, 1 - 1e-10), -2, -2
            for gind in range(len(gt)):
                if gtm[gind] > 0:
                    continue
                if bstm != -2 and gt_ig[gind] == 1:
                    break
                if ious[dind, gind] < bst_oa:
                    continue
                bst_oa, bstg = ious[dind, gind], gind
                bstm = 1 if gt_ig[gind] == 0 else -1
            if bstg == -2:
                continue
            dt_ig[dind] = gt_ig[bstg]
            dtm[dind] = 1
            if bstm == 1:
                gtm[bstg] = 1
        evals.append((np.array([d["score"] for d in dt]), dtm, dt_ig, gt_ig))
    scores = np.concatenate([e[0] for e in evals])
    inds = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e[1] for e in evals])[inds]
    dt_ig = np.concatenate([e[2] for e in evals])[inds]
    npig = np.count_nonzero(np.concatenate([e[3] for e in evals]) == 0)
    tps = np.logical_and(dtm, np.logical_not(dt_ig))[dt_ig == 0]
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))[dt_ig == 0]
    fppi = np.cumsum(fps).astype(float) / len(img_ids)
    recall = (np.cumsum(tps).astype(float) / npig).tolist()
    q = [0.0] * len(MR_REF)
    try:
        for ri, pi in enumerate(np.searchsorted(fppi, MR_REF, side="right") - 1):
            q[ri] = recall[pi]
    except IndexError:
        pass
    mrs = 1 - np.array(q)
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(mrs[mrs < 2]))))


def _cityperson_iou(dts, gts):
    ious = np.zeros((len(dts), len(gts)))
    for j, g in enumerate(gts):
        gx1, gy1 = g["bbox"][0], g["bbox"][1]
        gx2, gy2 = g["bbox"][0] + g["bbox"][2], g["bbox"][1] + g["bbox"][3]
        garea = g["bbox"][2] * g["bbox"][3]
        for i, d in enumerate(dts):
            dx1, dy1 = d["bbox"][0], d["bbox"][1]
            dx2, dy2 = d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]
            darea = d["bbox"][2] * d["bbox"][3]
            unionw = min(dx2, gx2) - max(dx1, gx1)
            if unionw <= 0:
                continue
            unionh = min(dy2, gy2) - max(dy1, gy1)
            if unionh <= 0:
                continue
            t = unionw * unionh
            unionarea = darea if g["ignore"] else darea + garea - t
            ious[i, j] = float(t) / unionarea
    return ious


# ------------------------------------------------------------------------ random cases
def _random_case(seed, num_images=100, busy=12, width=320, height=240):
    """Most images empty (so 1, 10, 100 false positives give FPPI 0.01, 0.1, 1.0 exactly);
    busy images hold people, crowds of near-duplicates, boxes past every border and ignore
    regions; scores come from a small set so that ties occur."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        image = {"width": width, "height": height, "gt": [], "dt": []}
        if i < busy:
            for _ in range(rng.integers(1, 9)):
                w, h = rng.uniform(15, 90), rng.uniform(40, 160)
                x, y = rng.uniform(-40, width - w + 40), rng.uniform(-60, height - h + 60)
                tag = -1 if rng.random() < 0.2 else 1
                image["gt"].append((x, y, x + w, y + h, tag))
                for _ in range(rng.integers(0, 3)):  # hits, near misses and duplicates
                    jitter = rng.normal(0, rng.choice([2.0, 12.0]), 4)
                    box = np.array([x, y, x + w, y + h]) + jitter
                    box[2:] = np.maximum(box[2:], box[:2] + 1)
                    image["dt"].append((*box, rng.choice([0.05, 0.3, 0.6, 0.9, 0.95])))
        for _ in range(rng.poisson(1.3)):  # background false positives, some off the image
            w, h = rng.uniform(10, 80), rng.uniform(30, 120)
            x, y = rng.uniform(-50, width), rng.uniform(-50, height)
            image["dt"].append((x, y, x + w, y + h, rng.choice([0.05, 0.3, 0.6, 0.9])))
        images.append(image)
    return images


def _coco(images, with_vis=False, seed=0):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": []}
    dets = []
    for i, image in enumerate(images, 1):
        gt["images"].append({"id": i, "width": image["width"], "height": image["height"]})
        for x1, y1, x2, y2, tag in image["gt"]:
            ann = {"image_id": i, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(tag == -1)}
            if with_vis:
                ann["vis_ratio"] = float(rng.choice([0.3, 0.65, 0.8, 1.0]))
            gt["annotations"].append(ann)
        for x1, y1, x2, y2, score in image["dt"]:
            dets.append({"image_id": i, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
def test_crowdhuman_protocol_equals_the_official_scripts(seed):
    images = _random_case(seed)
    reference = _CrowdHumanReference(images)
    scorelist = reference.compare()
    fps = sum(1 for _, is_tp in scorelist if not is_tp)
    assert fps >= 100  # FPPI passes 0.01, 0.1 and 1.0 exactly (100 images).
    ours = crowd_metrics(*_coco(images), protocol="crowdhuman")
    assert ours["AP50"] == pytest.approx(reference.eval_ap(scorelist), abs=1e-12)
    assert ours["MR-2"] == pytest.approx(reference.eval_mr(scorelist), abs=1e-12)
    assert ours["JI"] == pytest.approx(reference.eval_ji(), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_citypersons_reasonable_equals_the_official_script(seed):
    images = _random_case(seed + 100, height=400)
    gt, dets = _coco(images, with_vis=True, seed=seed)
    ours = crowd_metrics(gt, dets, protocol="citypersons")
    assert ours["MR-2"] == pytest.approx(_cityperson_reference_mr(gt, dets), abs=1e-12)


def _strip_case(rows, num_images=100):
    """One person per image on 100 images (strips of height 100 in a 1000 x 200 image);
    rows: (image, is_hit, score); a miss is a false positive on the background."""
    images = [
        {"width": 1000, "height": 200, "gt": [(0, 0, 10, 100, 1)], "dt": []}
        for _ in range(num_images)
    ]
    for image, hit, score in rows:
        box = (0, 0, 10, 100) if hit else (500, 0, 510, 100)
        images[image]["dt"].append((*box, score))
    return images


def test_fppi_reaching_a_point_exactly_reads_before_the_following_hits():
    # Ranked: FP (FPPI 0.01 exactly), then 50 hits at FPPI 0.01, then nothing more.
    rows = [(99, False, 1.0)] + [(i, True, 0.5) for i in range(50)]
    images = _strip_case(rows)
    gt, dets = _coco(images)
    official = _CrowdHumanReference(images)
    # CrowdHuman reads every point at the false positive (its first FPPI ≥ 0.01, and the last
    # detection for the larger points): miss rate 1 at 0.01, 0.5 at the others.
    expected = math.exp(math.log(0.5) * 8 / 9)
    assert official.eval_mr(official.compare()) == pytest.approx(expected)
    assert crowd_metrics(gt, dets, protocol="crowdhuman")["MR-2"] == pytest.approx(expected)
    # CityPersons reads the last detection with FPPI ≤ each point: miss rate 0.5 everywhere.
    assert _cityperson_reference_mr(gt, dets) == pytest.approx(0.5)
    assert crowd_metrics(gt, dets, protocol="citypersons")["MR-2"] == pytest.approx(0.5)


def test_boxes_past_the_border_are_clipped_before_matching():
    # The person's full box runs 30 px past the left edge; the detection stops at the edge.
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"image_id": 1, "bbox": [-30, 0, 50, 100]}],  # clipped: [0, 0, 20, 100]
    }
    dets = [{"image_id": 1, "bbox": [0, 0, 20, 100], "score": 1.0}]
    assert crowd_metrics(gt, dets, protocol="crowdhuman")["recall"] == 1.0
    assert crowd_metrics(gt, dets, protocol="inclusive")["recall"] == 0.0  # IoU 20 / 50


def test_clipping_protocol_needs_the_image_size():
    from perception_rl.metrics import RecordError

    gt = {"images": [{"id": 1}], "annotations": []}
    with pytest.raises(RecordError, match="width"):
        crowd_metrics(gt, [], protocol="crowdhuman")
    with pytest.raises(ValueError, match="protocol"):
        crowd_metrics(gt, [], protocol="caltech")
