"""Synthetic perception data: determinism, schema and the exactness of every annotation."""

import re

import numpy as np
import pytest

from perception_rl.data import synthetic

N = 24  # Examples checked per task.
CONFIG = synthetic.SyntheticConfig()


def _scenes(task, n=N, **kwargs):
    return [synthetic.generate_scene(task, i, **kwargs) for i in range(n)]


@pytest.fixture(scope="module", params=synthetic.TASKS)
def task_scenes(request):
    return request.param, _scenes(request.param)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_examples_are_a_pure_function_of_task_index_split_seed():
    for task in synthetic.TASKS:
        _assert_same(
            synthetic.generate_example(task, 7, split="test", seed=3),
            synthetic.generate_example(task, 7, split="test", seed=3),
        )
        images = [
            synthetic.generate_example(task, 7, split=split, seed=seed)["image"]
            for split, seed in (("test", 3), ("train", 3), ("test", 4))
        ]
        images.append(synthetic.generate_example(task, 8, split="test", seed=3)["image"])
        fingerprints = {image.tobytes() for image in images}
        assert len(fingerprints) == 4, task


def test_schema_and_boxes_inside_images(task_scenes):
    task, scenes = task_scenes
    sides = set(range(CONFIG.min_size, CONFIG.max_size + 1, CONFIG.size_step))
    for index, scene in enumerate(scenes):
        ex = scene.example
        height, width, channels = ex["image"].shape
        assert ex["image"].dtype == np.uint8 and channels == 3
        assert {height, width} <= sides
        assert ex["task"] == task and ex["image_id"] == index
        n = len(ex["boxes"])
        assert ex["boxes"].shape == (n, 4) and ex["boxes"].dtype == np.float32
        assert ex["labels"].shape == (n,) and ex["labels"].dtype == np.int64
        np.testing.assert_array_equal(ex["points"], (ex["boxes"][:, :2] + ex["boxes"][:, 2:]) / 2)
        assert n >= 1
        limits = [width, height, width, height]
        for box in np.concatenate([ex["boxes"], ex["ignore_boxes"]]):
            assert np.all(box >= 0) and np.all(box <= limits), box
            assert box[0] < box[2] and box[1] < box[3], box
        order = [(box[1], box[0]) for box in ex["boxes"]]
        assert order == sorted(order)


def test_annotated_objects_stay_visible_and_scenes_have_occlusion(task_scenes):
    task, scenes = task_scenes
    visible = [obj.visible for scene in scenes for obj in scene.objects if not obj.ignored]
    threshold = CONFIG.crowd_min_visible if task == "crowd" else CONFIG.min_visible
    assert min(visible) >= threshold - 1e-9
    if task != "ocr":
        assert min(visible) < 1.0, "no occlusion at all: the task would be too easy"


def test_counting_counts_every_instance_of_the_target_and_has_distractors():
    scenes = _scenes("counting")
    counts = set()
    for scene in scenes:
        ex = scene.example
        target = synthetic.LABELS.index(ex["query"])
        assert np.all(ex["labels"] == target)
        targets = [obj.box for obj in scene.objects if obj.label == target]
        assert len(targets) == len(ex["boxes"])
        assert {tuple(b) for b in targets} == {tuple(b) for b in ex["boxes"]}
        counts.add(len(targets))
    assert counts == set(range(1, CONFIG.max_count + 1))
    # Hard distractors: another object sharing the target's colour or shape somewhere.
    hard = 0
    for scene in scenes:
        color, shape = scene.example["query"].split()
        others = [
            synthetic.LABELS[o.label]
            for o in scene.objects
            if synthetic.LABELS[o.label] != scene.example["query"]
        ]
        hard += any(color in label or shape in label for label in others)
    assert hard >= N // 4


_LABEL = "|".join(synthetic.LABELS)
_EXPRESSION = re.compile(rf"the ({_LABEL})(?: ({'|'.join(synthetic.RELATIONS)}) the ({_LABEL}))?$")


def test_grounding_expressions_have_exactly_one_referent():
    kinds = set()
    for scene in _scenes("grounding", n=40):
        ex = scene.example
        match = _EXPRESSION.match(ex["query"])
        assert match, ex["query"]
        label, relation, anchor_label = match.groups()
        candidates = [o for o in scene.objects if synthetic.LABELS[o.label] == label]
        if relation is not None:
            kinds.add("relation")
            anchors = [o for o in scene.objects if synthetic.LABELS[o.label] == anchor_label]
            assert len(anchors) == 1
            assert len(candidates) >= 2  # The relation, not the label, singles the referent out.
            candidates = [
                o for o in candidates if synthetic.satisfies(relation, o.box, anchors[0].box)
            ]
        else:
            kinds.add("attribute")
        assert len(candidates) == 1, ex["query"]
        np.testing.assert_array_equal(ex["boxes"], candidates[0].box[None])
        assert ex["labels"].tolist() == [synthetic.LABELS.index(label)]
    assert kinds == {"relation", "attribute"}


def test_detection_annotates_every_object_with_its_label():
    for scene in _scenes("detection"):
        ex = scene.example
        assert sorted((tuple(o.box), o.label) for o in scene.objects) == sorted(
            zip(map(tuple, ex["boxes"]), ex["labels"], strict=True)
        )
        assert ex["query"] == ", ".join(synthetic.LABELS[i] for i in CONFIG.label_ids())


def test_shape_boxes_are_the_exact_pixel_extent():
    config = synthetic.SyntheticConfig(max_objects=1, noise=8)
    for i in range(N):
        ex = synthetic.generate_example("detection", i, config=config)
        color = np.array(synthetic.COLORS[synthetic.LABELS[ex["labels"][0]].split()[0]])
        near = np.abs(ex["image"].astype(int) - color).max(-1) <= 12 + 8  # Jitter + noise.
        cols, rows = np.flatnonzero(near.any(0)), np.flatnonzero(near.any(1))
        np.testing.assert_array_equal(
            ex["boxes"][0], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        )


def test_ocr_text_lines_and_their_exact_ink_boxes():
    config = synthetic.SyntheticConfig(max_text_lines=1)
    for i in range(N):
        ex = synthetic.generate_example("ocr", i, config=config)
        assert ex["text"] and ex["text"] == ex["text"].strip() and "\n" not in ex["text"]
        assert ex["query"] == "" and ex["labels"].tolist() == [synthetic.NO_LABEL]
        ink = ex["image"].max(-1) < 150  # Ink is darker than 100, background lighter than 190.
        cols, rows = np.flatnonzero(ink.any(0)), np.flatnonzero(ink.any(1))
        np.testing.assert_array_equal(
            ex["boxes"][0], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        )
    lines = [synthetic.generate_example("ocr", i)["text"].count("\n") + 1 for i in range(N)]
    assert max(lines) > 1
    assert all(len(synthetic.generate_example("ocr", i)["boxes"]) == n for i, n in enumerate(lines))


def test_crowd_ignore_regions_hold_only_ignored_instances():
    scenes = _scenes("crowd")
    assert sum(len(s.example["ignore_boxes"]) > 0 for s in scenes) >= N // 2
    for scene in scenes:
        ex = scene.example
        target = synthetic.LABELS.index(ex["query"])
        lo, hi = CONFIG.crowd_count
        assert lo <= len(ex["boxes"]) <= hi and np.all(ex["labels"] == target)
        counted = [o for o in scene.objects if o.label == target and not o.ignored]
        assert len(counted) == len(ex["boxes"])
        for obj in scene.objects:
            inside = [_contains(region, obj.box) for region in ex["ignore_boxes"]]
            overlaps = [_overlap(region, obj.box) for region in ex["ignore_boxes"]]
            assert any(inside) if obj.ignored else not any(overlaps)


def _contains(outer, inner):
    return np.all(outer[:2] <= inner[:2]) and np.all(inner[2:] <= outer[2:])


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_source_is_random_access_and_rejects_bad_input():
    source = synthetic.SyntheticSource("counting", "validation", 5, seed=2)
    assert len(source) == 5
    _assert_same(source[4], synthetic.generate_example("counting", 4, split="validation", seed=2))
    with pytest.raises(IndexError):
        source[5]
    with pytest.raises(ValueError, match="Unknown task"):
        synthetic.generate_example("segmentation", 0)
