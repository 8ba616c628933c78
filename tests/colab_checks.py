"""Checks run inside a notebook's namespace after its cells (see tests/test_colabs.py).

Each `check_<notebook>(ns)` receives the notebook's globals and compares what the notebook
shows with what the package computes on the same inputs, recomputed here independently.
"""

import numpy as np
from matplotlib.colors import to_rgba

TASKS = ("grounding", "counting", "ocr", "detection", "crowd")


def _rectangles(ax, colour: str, linestyle: str = "-") -> np.ndarray:
    """[n, 4] x1, y1, x2, y2 of the unfilled rectangles drawn on `ax` in `colour`/`linestyle`."""
    found = []
    for patch in ax.patches:
        if not hasattr(patch, "get_width"):
            continue
        if patch.get_edgecolor() != to_rgba(colour) or patch.get_linestyle() != linestyle:
            continue
        x, y = patch.get_xy()
        found.append([x, y, x + patch.get_width(), y + patch.get_height()])
    return np.asarray(found, np.float64).reshape(-1, 4)


def _sorted_rows(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return boxes[np.lexsort(boxes.T[::-1])] if len(boxes) else boxes


def _assert_same_boxes(drawn, expected, what: str) -> None:
    np.testing.assert_allclose(_sorted_rows(drawn), _sorted_rows(expected), atol=1e-6, err_msg=what)


def _image_at_pixels(ax, height: int, width: int) -> None:
    """The axes show one image whose data coordinates are its pixel coordinates."""
    (image,) = ax.get_images()
    assert image.get_array().shape[:2] == (height, width)
    assert tuple(image.get_extent()) == (-0.5, width - 0.5, height - 0.5, -0.5)


# ------------------------------------------------------------------------------------- rewards
def check_rewards(ns: dict) -> None:
    from perception_rl import rewards
    from perception_rl.data import synthetic
    from perception_rl.data.tasks import ImageGeometry, get_task
    from perception_rl.processing import Processor, tiny_tokenizer_path

    image_processor = Processor.from_pretrained(tiny_tokenizer_path()).image_processor
    family = ns["FAMILY"]
    tables = ns["reward_tables"]
    assert set(tables) == set(TASKS), sorted(tables)
    for name in TASKS:
        example = synthetic.generate_example(
            name, ns["EXAMPLE_INDEX"][name], split="validation", seed=0
        )
        task = get_task(name)
        geometry = ImageGeometry.for_image(*example["image"].shape[:2], image_processor)
        completions = ns["completions"][name]
        expected = rewards.score_components(
            task.reward,
            completions,
            [task.target(example, geometry, family)],
            group_size=len(completions),
            **task.reward_options(family),
        )
        rows = tables[name]
        # The table: one row per completion, exactly the API's components.
        assert [row["completion"] for row in rows] == list(range(len(completions)))
        assert set(rows[0]) == {"task", "completion", *expected}, (name, sorted(rows[0]))
        for key, values in expected.items():
            np.testing.assert_array_equal(
                np.array([row[key] for row in rows], np.float32), values, err_msg=f"{name} {key}"
            )
        # The ideal answer scores the maximum; the last completion is the malformed one and
        # shows its format penalty (OCR has no format term).
        _, high = rewards.value_range(task.reward, **task.reward_options(family))
        if name != "crowd":  # DIP's look reward depends on the rest of the group
            assert expected["total"][0] == high, (name, expected["total"][0])
        if "format" in expected:
            assert expected["format"][0] == 1.0 and expected["format"][-1] == 0.0, name
            assert expected["total"][-1] < expected["total"][0], name
        # The panels: the image at its pixels, ground truth green, the parsed boxes red.
        axes = ns["figures"][name].axes
        assert len(axes) == len(completions), name
        for i, ax in enumerate(axes):
            _image_at_pixels(ax, *example["image"].shape[:2])
            _assert_same_boxes(_rectangles(ax, "lime"), example["boxes"], f"{name} truth")
            _assert_same_boxes(
                _rectangles(ax, "lime", ":"), example["ignore_boxes"], f"{name} ignore"
            )
            parsed = task.predict(completions[i], geometry, family)
            _assert_same_boxes(
                _rectangles(ax, "red"), parsed.get("boxes", ()), f"{name} #{i} prediction"
            )
            _assert_same_boxes(
                _rectangles(ax, "orange", "--"), parsed.get("look", ()), f"{name} #{i} look"
            )
