"""Checks run inside a notebook's namespace after its cells (see tests/test_colabs.py).

Each `check_<notebook>(ns)` receives the notebook's globals and compares what the notebook
shows with what the package computes on the same inputs, recomputed here independently.
"""

import numpy as np
from matplotlib.colors import to_rgba

TASKS = ("grounding", "counting", "ocr", "detection", "crowd")
_LINE_STYLES = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}


def _rectangles(ax, colour: str, linestyle: str = "-") -> np.ndarray:
    """[n, 4] x1, y1, x2, y2 of the unfilled rectangles drawn on `ax` in `colour`/`linestyle`."""
    found = []
    for patch in ax.patches:
        if not hasattr(patch, "get_width"):
            continue
        style = _LINE_STYLES.get(patch.get_linestyle(), patch.get_linestyle())
        if patch.get_edgecolor() != to_rgba(colour) or style != linestyle:
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
    from perception_rl.data import sources, synthetic
    from perception_rl.processing import Processor, tiny_tokenizer_path
    from perception_rl.tasks import ImageGeometry

    image_processor = Processor.from_pretrained(tiny_tokenizer_path()).image_processor
    family = ns["FAMILY"]
    tables = ns["reward_tables"]
    assert set(tables) == set(TASKS), sorted(tables)
    for name in TASKS:
        example = synthetic.generate_example(
            name, ns["EXAMPLE_INDEX"][name], split="validation", seed=0
        )
        task = sources.task_from_config({"task": name})
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


# ------------------------------------------------------------------------------------ datasets
def _xyxy(xywh) -> np.ndarray:
    boxes = np.asarray(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _expected_drawings(ns: dict) -> dict:
    """(dataset, index) -> (image file, boxes, crowd boxes, ignore boxes, points), in original
    pixels, converted here from the raw files the notebook wrote (not from the builders)."""
    expected = {}
    raw, dirs = ns["raw_annotations"], ns["RAW_DIRS"]
    for i, scene in enumerate(raw["crowdhuman"]):
        people = [b for b in scene["gtboxes"] if b["tag"] == "person" and not b["extra"]["ignore"]]
        ignored = [b for b in scene["gtboxes"] if b not in people]
        expected["crowdhuman", i] = (
            dirs["crowdhuman"] / "Images" / f"{scene['ID']}.jpg",
            _xyxy([b["fbox"] for b in people]),
            _xyxy([]),
            _xyxy([b["fbox"] for b in ignored]),
            np.zeros((0, 2)),
        )
    coco = raw["coco_detection"]
    for i, image in enumerate(coco["images"]):
        mine = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected["coco_detection", i] = (
            dirs["coco_detection"] / "val2017" / image["file_name"],
            _xyxy([a["bbox"] for a in mine if not a["iscrowd"]]),
            _xyxy([a["bbox"] for a in mine if a["iscrowd"]]),
            _xyxy([]),
            np.zeros((0, 2)),
        )
    for i, row in enumerate(raw["pixmo_count"]):
        expected["pixmo_count", i] = (
            dirs["pixmo_count"] / "images" / f"{row['image_sha256']}.jpg",
            _xyxy([]),
            _xyxy([]),
            _xyxy([]),
            np.array([[p["x"], p["y"]] for p in row["points"]], np.float64),
        )
    return expected


def check_datasets(ns: dict) -> None:
    from PIL import Image

    from perception_rl.data import synthetic

    drawn = ns["drawn_axes"]
    expected = _expected_drawings(ns)
    # Every fixture example was built, read back and drawn (two per dataset).
    assert {key for key in drawn if key[0] != "synthetic"} == set(expected), sorted(drawn)
    for key, (image_file, boxes, crowd, ignore, points) in expected.items():
        ax = drawn[key]
        pixels = np.asarray(Image.open(image_file).convert("RGB"))
        _image_at_pixels(ax, *pixels.shape[:2])
        # The drawn image is the raw file's pixels (JPEG decoded the same way).
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), pixels, err_msg=str(key))
        _assert_same_boxes(_rectangles(ax, "lime", "-"), boxes, f"{key} boxes")
        _assert_same_boxes(_rectangles(ax, "lime", "--"), crowd, f"{key} crowd boxes")
        _assert_same_boxes(_rectangles(ax, "lime", ":"), ignore, f"{key} ignore regions")
        marks = [line.get_xydata() for line in ax.get_lines() if line.get_marker() == "x"]
        marks = np.concatenate(marks) if marks else np.zeros((0, 2))
        np.testing.assert_allclose(marks, points, atol=1e-4, err_msg=f"{key} points")
        # Each annotated object of the fixture is painted where its box is: the box's centre
        # pixel is not the background (the image's corner pixel).
        for x1, y1, x2, y2 in np.concatenate([boxes, crowd]):
            centre = pixels[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(int)
            assert np.abs(centre - pixels[0, 0].astype(int)).sum() > 60, (key, (x1, y1, x2, y2))
    synthetic_keys = sorted(key for key in drawn if key[0] == "synthetic")
    assert synthetic_keys, "no synthetic scene drawn"
    crowds = ns["synthetic_crowds"]
    assert sum(len(e["ignore_boxes"]) for e in crowds) > 0, "no ignore region drawn"
    for key in synthetic_keys:
        example = crowds[key[1]]
        fresh = synthetic.generate_example("crowd", (10, 13)[key[1]], split="validation", seed=0)
        np.testing.assert_array_equal(example["image"], fresh["image"])
        ax = drawn[key]
        _image_at_pixels(ax, *example["image"].shape[:2])
        _assert_same_boxes(_rectangles(ax, "lime", "-"), fresh["boxes"], f"{key} boxes")
        _assert_same_boxes(_rectangles(ax, "lime", ":"), fresh["ignore_boxes"], f"{key} ignore")


# --------------------------------------------------------------------------- train_and_compare
def check_train_and_compare(ns: dict) -> None:
    import json

    from perception_rl.tasks import get_task
    from perception_rl.eval import runner
    from perception_rl import recipe, report
    from perception_rl.rl.metric_writer import read_metrics

    config, workdir = ns["config"], ns["WORKDIR"]
    # The shortened config is the main job's with exactly the stated overrides.
    for key, value in ns["SHORTENED"].items():
        section = config
        for part in key.split(".")[:-1]:
            section = section[part]
        assert section[key.split(".")[-1]] == value, key
    assert config.task == ns["TASK"] and config.mode == "recipe"
    for phase in recipe.PHASES:
        assert (workdir / phase / "policy" / "config.json").is_file(), phase
    # The live figure, redrawn while GRPO ran, ended showing every step of the metrics file.
    records = read_metrics(str(workdir / "grpo" / "metrics.jsonl"))
    steps, values = ns["live_curve"]["total"]
    assert steps == [r["step"] for r in records] == list(range(1, config.train.num_steps + 1))
    assert values == [r["reward/total/mean"] for r in records]
    # The final table is the recipe's report: the table of the saved summary, whose metrics are
    # the two evaluations' metrics.json.
    saved = json.loads((workdir / "report" / "before_after.json").read_text())
    split = config.eval.split
    for phase in recipe.PHASES:
        evaluated = json.loads((workdir / "eval" / phase / "metrics.json").read_text())
        assert saved["metrics"][phase] == evaluated["metrics"], phase
        assert ns["summary"]["metrics"][phase] == evaluated["metrics"], phase
    table = ns["final_table"]
    assert table == (workdir / "report" / "table.md").read_text()
    assert table.startswith(report.format_table(saved, split) + "\n")
    task = get_task(config.task)
    for label, metrics in (("SFT", saved["metrics"]["sft"]), ("GRPO", saved["metrics"]["grpo"])):
        cells = [runner._percent(metrics.get(key)) for key, _ in task.table_columns]
        assert f"| {label} | {split} | " + " | ".join(cells) + " |" in table, label
    assert saved["train_reward"]["steps"] == config.train.num_steps
    assert f"over {config.train.num_steps} steps" in table
    # Run again here, the recipe assembles the same summary from the same workdir.
    again = recipe.run(config, str(workdir))
    assert again["metrics"] == saved["metrics"] and again["delta"] == saved["delta"]


# ---------------------------------------------------------------------------------- checkpoint
def _pure_params(path) -> dict:
    from flax import nnx

    from perception_rl.models import from_pretrained

    return nnx.to_pure_dict(nnx.split(from_pretrained(str(path)), nnx.Param)[1])


def _assert_same_tree(a, b, what: str) -> None:
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


def check_checkpoint(ns: dict) -> None:
    import importlib.util
    import json
    import pathlib

    from transformers import AutoConfig

    from perception_rl import plan, rewards
    from perception_rl.data import synthetic
    from perception_rl.tasks import ImageGeometry, get_task

    # The default checkpoint is the tiny random policy, written by export_policy and loaded
    # back unchanged.
    _assert_same_tree(_pure_params(ns["CHECKPOINT"]), ns["tiny"].params, "exported tiny")
    _assert_same_tree(ns["policy"].params, ns["tiny"].params, "loaded checkpoint")
    family = ns["family"]
    image_processor = ns["policy"].processor.image_processor
    # Predictions: parsed from each completion as the task parses it, scored by the reward,
    # drawn at their pixels beside the ground truth.
    for row, name in enumerate(ns["TASKS"]):
        task = get_task(name)
        options = task.reward_options(family)
        assert len(ns["records"][name]) == ns["IMAGES_PER_TASK"]
        for column, record in enumerate(ns["records"][name]):
            example = synthetic.generate_example(name, column, split="validation", seed=0)
            geometry = ImageGeometry.for_image(*example["image"].shape[:2], image_processor)
            assert record["prediction"] == task.predict(record["completion"], geometry, family)
            target = task.target(example, geometry, family)
            reward = rewards.score(
                task.reward, [record["completion"]], [target], group_size=1, **options
            )
            assert record["reward"] == float(reward[0]), (name, column)
            ax = ns["axes"][row][column]
            _image_at_pixels(ax, *example["image"].shape[:2])
            _assert_same_boxes(_rectangles(ax, "lime"), example["boxes"], f"{name} truth")
            _assert_same_boxes(
                _rectangles(ax, "red"), record["prediction"]["boxes"], f"{name} prediction"
            )
    # The TPU plan (libtpu is a test dependency): every GRPO program compiled for v5e 2x2.
    if importlib.util.find_spec("libtpu") is not None:
        found = ns["memory_plan"]
        assert found is not None and found.chips == 4 and found.fits
        names = [p.name for p in found.programs]
        assert names == ["sampler prefill", "sampler decode", "reference log-probs", "grpo update"]
        assert found.shapes.prompts == 4 and found.shapes.group == 4
        for program in found.programs:
            assert 0 < program.peak < found.chip.hbm and program.flops > 0, program.name
        setup = plan.setup(ns["plan_config"], "v5e:2x2", (1, 4, 1))
        assert found.programs[-1].resident == plan.per_chip_bytes(setup.params)
    # Saved back: the same weights and architecture, readable by transformers.
    saved = ns["SAVED"]
    assert ns["same_weights"] is True
    _assert_same_tree(_pure_params(saved), ns["policy"].params, "saved checkpoint")
    original = json.loads((pathlib.Path(ns["CHECKPOINT"]) / "config.json").read_text())
    assert json.loads((saved / "config.json").read_text()) == original
    assert AutoConfig.from_pretrained(str(saved)).model_type == "qwen2_5_vl"
