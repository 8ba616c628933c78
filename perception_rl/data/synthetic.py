"""Procedural perception data with exact annotations: shapes and text drawn with PIL.

Every example is a pure function of `(task, index, split, seed, config)`: the random stream is
seeded from those values, so any example can be regenerated on any host without storage.

Scenes are coloured shapes (`LABELS` = colour × shape, e.g. "red circle"; colours jittered per
object) on a pale background, or dark text lines in PIL's built-in bitmap font. Boxes are the
tight pixel extent `[x1, y1, x2, y2]` of the whole shape (amodal; x2/y2 exclusive pixel edges),
measured on the rasterised mask, so they are exact. Later objects may occlude earlier ones, but
every annotated object keeps at least `min_visible` of its pixels; objects never cross the
border.

Tasks (the `task` field; see seed_spec.md A4–A7, B3):
  counting:   instances of one label plus distractors sharing its colour or shape; `query` is
              the label, `points` the instance centres.
  grounding:  one referent, `query` a referring expression by colour and shape ("the blue
              square") or by relative position ("the blue square left of the green triangle",
              with same-label decoys on the other side of the anchor).
  detection:  every object with its label; `query` lists the label set.
  ocr:        one to a few lines of words; `text` is the lines joined by newlines, `boxes` the
              line extents.
  crowd:      many small overlapping instances of one label (the DIP-R1 recipe), plus clusters
              of tiny instances annotated only as `ignore_boxes` (CityPersons-style ignore
              regions; annotated boxes never intersect them).

Longer than ~400 lines on purpose: the five tasks' generators share the canvas, placement and
occlusion code, and one file keeps every example a visible pure function of its seed.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 195, 20),
    "purple": (140, 55, 175),
}
SHAPES = ("circle", "square", "triangle")
LABELS = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
NO_LABEL = -1  # Label of OCR text lines.
TASKS = ("counting", "grounding", "detection", "ocr", "crowd")
RELATIONS = ("left of", "right of", "above", "below")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_WORDS = tuple(
    """
  apple river stone cloud green light house paper music table water bread happy north south
  east west small large quick brown fox jumps over lazy dog seven eight three nine zero alpha
  delta omega pixel image model token vision learn reward policy train tiny world hello data
  garden window orange violet silver winter summer spring autumn market street bridge castle
  forest island rocket planet copper marble pencil ticket coffee butter candle circle square
  Paris Tokyo Oslo Lima Cairo Rome Alice Bob Carol 2024 1999 42 17 365 No Yes Stop Open Exit
""".split()
)

_MAX_TRIES = 60  # Random placements tried per object.
_MAX_RESTARTS = 40  # Fresh scenes tried before a configuration is declared infeasible.


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator. Sizes are pixels; scales are fractions of the shorter side.

    Attributes:
      min_size: smallest image side.
      max_size: largest image side; height and width are drawn independently from
        `range(min_size, max_size + 1, size_step)`.
      size_step: granularity of image sides (28 = Qwen-VL's resize factor).
      colors: colours to sample (keys of `COLORS`).
      shapes: shapes to sample (members of `SHAPES`).
      object_scale: range of object sides for counting, grounding and detection.
      min_visible: fraction of its pixels every annotated object keeps after occlusion.
      max_count: counting scenes hold 1..max_count instances of the target label.
      max_distractors: counting and grounding scenes hold 0..max_distractors other objects.
      max_objects: detection scenes hold 1..max_objects objects.
      relation_prob: probability that a grounding expression uses a relative position.
      max_text_lines: OCR images hold 1..max_text_lines lines.
      max_text_scale: OCR glyphs are the 6x11 bitmap font scaled by 1..max_text_scale.
      crowd_count: range of annotated instances in a crowd scene.
      crowd_scale: range of crowd instance sides.
      crowd_min_visible: `min_visible` for crowd instances (crowds overlap more).
      max_ignore_regions: crowd scenes hold 0..max_ignore_regions ignore regions.
      noise: amplitude of per-pixel uniform noise; 8 makes a PNG ~45 KB instead of ~1 KB.
    """

    min_size: int = 112
    max_size: int = 224
    size_step: int = 28
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    object_scale: tuple[float, float] = (0.12, 0.22)
    min_visible: float = 0.6
    max_count: int = 6
    max_distractors: int = 4
    max_objects: int = 6
    relation_prob: float = 0.5
    max_text_lines: int = 3
    max_text_scale: int = 2
    crowd_count: tuple[int, int] = (8, 16)
    crowd_scale: tuple[float, float] = (0.06, 0.1)
    crowd_min_visible: float = 0.4
    max_ignore_regions: int = 2
    noise: int = 0

    def label_ids(self) -> tuple[int, ...]:
        """Indices into `LABELS` of the colour × shape combinations this config samples."""
        return tuple(LABELS.index(f"{c} {s}") for c in self.colors for s in self.shapes)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One drawn object, for checks and visualisation beyond the task's annotation.

    Attributes:
      label: index into `LABELS`, or `NO_LABEL` for a text line.
      box: `[x1, y1, x2, y2]` float32 tight pixel extent of the whole object.
      visible: fraction of the object's pixels not covered by objects drawn later.
      ignored: whether the object lies inside an ignore region (crowd scenes).
    """

    label: int
    box: np.ndarray
    visible: float
    ignored: bool = False


@dataclasses.dataclass(frozen=True)
class Scene:
    """A generated example and every object drawn in it, back to front."""

    example: dict
    objects: tuple[SceneObject, ...]


def generate_example(
    task: str,
    index: int,
    *,
    split: str = "train",
    seed: int = 0,
    config: SyntheticConfig = SyntheticConfig(),
) -> dict:
    """Returns example `index` of `split`; see `generate_scene` and the module docstring.

    Returns:
      A dict with `image` (uint8 [H, W, 3]), `image_id` (int, = index), `task`, `query` (str),
      `boxes` (float32 [N, 4]), `labels` (int64 [N], into `LABELS`), `points` (float32 [N, 2],
      box centres), `text` (str) and `ignore_boxes` (float32 [K, 4]); coordinates are pixels of
      `image`. Boxes are sorted top to bottom, then left to right.
    """
    return generate_scene(task, index, split=split, seed=seed, config=config).example


def generate_scene(
    task: str,
    index: int,
    *,
    split: str = "train",
    seed: int = 0,
    config: SyntheticConfig = SyntheticConfig(),
) -> Scene:
    """Draws example `index` of `split` for `task`, deterministically.

    Raises:
      ValueError: for an unknown task or a negative index or seed.
      RuntimeError: if the config leaves no room to place the requested objects.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got {index}, {seed}.")
    rng = np.random.default_rng([seed, _stable_id(task), _stable_id(split), index])
    sides = np.arange(config.min_size, config.max_size + 1, config.size_step)
    height, width = int(rng.choice(sides)), int(rng.choice(sides))
    draw_scene = _SCENES[task]
    for _ in range(_MAX_RESTARTS):
        canvas = _Canvas(height, width)
        layout = draw_scene(canvas, rng, config)
        if layout is not None:
            return _finish(canvas, layout, rng, task, index, config)
    raise RuntimeError(
        f"Could not place the {task} objects of example {index} in a "
        f"{height}x{width} image; loosen the SyntheticConfig."
    )


def satisfies(relation: str, box: np.ndarray, anchor: np.ndarray) -> bool:
    """Whether `box` lies entirely `relation` ("left of", ...) the `anchor` box."""
    if relation == "left of":
        return box[2] <= anchor[0]
    if relation == "right of":
        return box[0] >= anchor[2]
    if relation == "above":
        return box[3] <= anchor[1]
    if relation == "below":
        return box[1] >= anchor[3]
    raise ValueError(f"Unknown relation {relation!r}.")


class SyntheticSource:
    """Random-access view `[i] -> generate_example(task, i, ...)`, a grain data source."""

    def __init__(
        self,
        task: str,
        split: str,
        num_examples: int,
        *,
        seed: int = 0,
        config: SyntheticConfig = SyntheticConfig(),
    ):
        self.task, self.split, self.seed, self.config = task, split, seed, config
        self._num_examples = num_examples

    def __len__(self) -> int:
        return self._num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._num_examples:
            raise IndexError(f"Index {index} out of range for {self._num_examples} examples.")
        return generate_example(
            self.task, int(index), split=self.split, seed=self.seed, config=self.config
        )

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(task={self.task!r}, split={self.split!r}, "
            f"num_examples={self._num_examples}, seed={self.seed})"
        )


# ---------------------------------------------------------------------------------------------
# Canvas: an owner map (index of the top-most object per pixel) that enforces visibility.


@dataclasses.dataclass
class _Layout:
    """What a scene function decided: the query, the annotated objects and ignore regions."""

    query: str
    annotated: list[int]
    ignore_boxes: list[np.ndarray] = dataclasses.field(default_factory=list)
    text: str = ""


class _Canvas:
    """Objects drawn back to front; `add` refuses an object that would hide too much."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.owner = np.full((height, width), -1, np.int32)
        self.labels, self.colors, self.boxes, self.ignored = [], [], [], []
        self._areas, self._min_visible = [], []

    def add(
        self,
        mask: np.ndarray,
        label: int,
        color: np.ndarray,
        *,
        min_visible: float,
        ignored: bool = False,
    ) -> int | None:
        """Draws `mask` on top; returns its object index, or None if it hides too much."""
        n = len(self.labels)
        owner = np.where(mask, n, self.owner)
        visible = np.bincount(owner.ravel() + 1, minlength=n + 2)[1 : n + 1]
        if np.any(visible < np.asarray(self._min_visible) * np.asarray(self._areas)):
            return None
        self.owner = owner
        self.labels.append(label)
        self.colors.append(color)
        self.boxes.append(_mask_box(mask))
        self.ignored.append(ignored)
        self._areas.append(int(mask.sum()))
        self._min_visible.append(min_visible)
        return n

    def visible_fractions(self) -> np.ndarray:
        visible = np.bincount(self.owner.ravel() + 1, minlength=len(self.labels) + 1)[1:]
        return visible / np.asarray(self._areas)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight `[x1, y1, x2, y2]` of a non-empty boolean mask, x2/y2 exclusive."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _shape_mask(shape: str, x: int, y: int, side: int, height: int, width: int) -> np.ndarray:
    """Boolean [height, width] mask of `shape` with its side×side bounding square at (x, y)."""
    image = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(image)
    corners = [x, y, x + side - 1, y + side - 1]  # PIL's coordinates are inclusive.
    if shape == "circle":
        draw.ellipse(corners, fill=1)
    elif shape == "square":
        draw.rectangle(corners, fill=1)
    else:
        draw.polygon(
            [(x + (side - 1) / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=1
        )
    return np.asarray(image, bool)


def _place(
    canvas: _Canvas,
    rng: np.random.Generator,
    label: int,
    scale: tuple[float, float],
    *,
    min_visible: float,
    accept=None,
    region=None,
    ignored: bool = False,
) -> int | None:
    """Tries random positions and sizes for `label` until one is visible enough and accepted.

    Args:
      accept: optional predicate on the candidate's exact box (e.g. a spatial relation).
      region: optional `(x1, y1, x2, y2)` the object must lie in; default the whole canvas.

    Returns:
      The new object's index, or None after `_MAX_TRIES` failures.
    """
    color_name, shape = LABELS[label].split(" ")
    x1, y1, x2, y2 = region or (0, 0, canvas.width, canvas.height)
    short = min(canvas.height, canvas.width)
    high = min(max(3, round(scale[1] * short)), x2 - x1, y2 - y1)
    low = min(max(3, round(scale[0] * short)), high)
    for _ in range(_MAX_TRIES):
        side = int(rng.integers(low, high + 1))
        x = int(rng.integers(x1, x2 - side + 1))
        y = int(rng.integers(y1, y2 - side + 1))
        mask = _shape_mask(shape, x, y, side, canvas.height, canvas.width)
        if accept is not None and not accept(_mask_box(mask)):
            continue
        color = np.clip(np.array(COLORS[color_name]) + rng.integers(-12, 13, 3), 0, 255)
        index = canvas.add(mask, label, color, min_visible=min_visible, ignored=ignored)
        if index is not None:
            return index
    return None


def _distractor_labels(
    rng: np.random.Generator, target: int, n: int, config: SyntheticConfig, exclude: tuple[int, ...]
) -> list[int]:
    """`n` labels not in `exclude`; about half share the target's colour or shape (hard ones)."""
    pool = [label for label in config.label_ids() if label not in exclude]
    color, shape = LABELS[target].split(" ")
    hard = [label for label in pool if color in LABELS[label] or shape in LABELS[label]]
    return [int(rng.choice(hard if hard and rng.random() < 0.5 else pool)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Scenes, one per task. Each returns a _Layout, or None when a placement failed (retry).


def _counting_scene(canvas, rng, config):
    target = int(rng.choice(config.label_ids()))
    count = int(rng.integers(1, config.max_count + 1))
    n_distractors = int(rng.integers(0, config.max_distractors + 1))
    labels = [target] * count + _distractor_labels(rng, target, n_distractors, config, (target,))
    rng.shuffle(labels)  # Interleave z-order: distractors may occlude targets.
    placed = [
        _place(canvas, rng, label, config.object_scale, min_visible=config.min_visible)
        for label in labels
    ]
    if None in placed:
        return None
    return _Layout(LABELS[target], [i for i in placed if canvas.labels[i] == target])


def _grounding_scene(canvas, rng, config):
    labels = config.label_ids()
    target = int(rng.choice(labels))
    place = functools.partial(
        _place, canvas, rng, scale=config.object_scale, min_visible=config.min_visible
    )
    n_distractors = int(rng.integers(0, config.max_distractors + 1))
    if rng.random() >= config.relation_prob:
        referent = place(target)
        distractors = _distractor_labels(rng, target, n_distractors, config, (target,))
        if referent is None or None in [place(label) for label in distractors]:
            return None
        return _Layout(f"the {LABELS[target]}", [referent])
    # Relative position: the target label appears 2-3 times, so only the relation singles out
    # the referent; decoys lie on the opposite side of the (unique) anchor.
    anchor_label = int(rng.choice([label for label in labels if label != target]))
    relation = str(rng.choice(RELATIONS))

    def central(box):  # Leaves room on every side for the referent and the decoys.
        return (
            0.3 <= (box[0] + box[2]) / 2 / canvas.width <= 0.7
            and 0.3 <= (box[1] + box[3]) / 2 / canvas.height <= 0.7
        )

    anchor = place(anchor_label, accept=central)
    if anchor is None:
        return None
    anchor_box = canvas.boxes[anchor]
    referent = place(target, accept=lambda box: satisfies(relation, box, anchor_box))
    decoys = [
        place(target, accept=lambda box: satisfies(_OPPOSITE[relation], box, anchor_box))
        for _ in range(int(rng.integers(1, 3)))
    ]
    distractors = _distractor_labels(rng, target, n_distractors, config, (target, anchor_label))
    if referent is None or None in decoys or None in [place(label) for label in distractors]:
        return None
    return _Layout(f"the {LABELS[target]} {relation} the {LABELS[anchor_label]}", [referent])


def _detection_scene(canvas, rng, config):
    n_objects = int(rng.integers(1, config.max_objects + 1))
    labels = [int(label) for label in rng.choice(config.label_ids(), n_objects)]
    placed = [
        _place(canvas, rng, label, config.object_scale, min_visible=config.min_visible)
        for label in labels
    ]
    if None in placed:
        return None
    return _Layout(", ".join(LABELS[label] for label in config.label_ids()), placed)


def _ocr_scene(canvas, rng, config):
    scale = int(rng.integers(1, config.max_text_scale + 1))
    margin, gap = 4, int(rng.integers(1, 4)) * scale
    char_w, line_h = 6 * scale, 11 * scale  # The bitmap font's cell.
    max_chars = (canvas.width - 2 * margin) // char_w
    max_lines = min(config.max_text_lines, (canvas.height - 2 * margin + gap) // (line_h + gap))
    if max_chars < max(map(len, _WORDS)) or max_lines < 1:
        return None  # Too big a scale for this image; the restart redraws it.
    lines = [_text_line(rng, max_chars) for _ in range(int(rng.integers(1, max_lines + 1)))]
    block_h = len(lines) * (line_h + gap) - gap
    y = int(rng.integers(margin, canvas.height - margin - block_h + 1))
    ink = rng.integers(0, 90, 3)
    annotated = []
    for line in lines:
        x = int(rng.integers(margin, canvas.width - margin - len(line) * char_w + 1))
        mask = _text_mask(line, x, y, scale, canvas.height, canvas.width)
        annotated.append(canvas.add(mask, NO_LABEL, ink, min_visible=1.0))
        y += line_h + gap
    return _Layout("", annotated, text="\n".join(lines))


def _text_line(rng: np.random.Generator, max_chars: int) -> str:
    words = [str(rng.choice(_WORDS))]
    for _ in range(int(rng.integers(0, 4))):
        word = str(rng.choice(_WORDS))
        if len(" ".join(words)) + 1 + len(word) <= max_chars:
            words.append(word)
    return " ".join(words)


@functools.cache
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()  # Bundled bitmap font: no files, no network.


def _text_mask(text: str, x: int, y: int, scale: int, height: int, width: int) -> np.ndarray:
    line = Image.new("1", (6 * len(text), 11), 0)
    ImageDraw.Draw(line).text((0, 0), text, font=_font(), fill=1)
    line = line.resize((line.width * scale, line.height * scale), Image.Resampling.NEAREST)
    mask = np.zeros((height, width), bool)
    mask[y : y + line.height, x : x + line.width] = np.asarray(line, bool)
    return mask


def _crowd_scene(canvas, rng, config):
    target = int(rng.choice(config.label_ids()))
    ignore_boxes = []
    for _ in range(int(rng.integers(0, config.max_ignore_regions + 1))):
        region = _ignore_region(canvas, rng, target, ignore_boxes)
        if region is None:
            return None
        ignore_boxes.append(region)

    def outside(box):
        return not any(_intersects(box, region) for region in ignore_boxes)

    count = int(rng.integers(config.crowd_count[0], config.crowd_count[1] + 1))
    n_distractors = int(rng.integers(0, config.max_distractors + 1))
    labels = [target] * count + _distractor_labels(rng, target, n_distractors, config, (target,))
    rng.shuffle(labels)
    placed = [
        _place(
            canvas,
            rng,
            label,
            config.crowd_scale,
            accept=outside,
            min_visible=config.crowd_min_visible,
        )
        for label in labels
    ]
    if None in placed:
        return None
    annotated = [i for i in placed if canvas.labels[i] == target]
    return _Layout(LABELS[target], annotated, ignore_boxes=ignore_boxes)


def _ignore_region(canvas, rng, target, taken) -> np.ndarray | None:
    """A dense cluster of tiny target instances; returns its extent, the ignore box."""
    short = min(canvas.height, canvas.width)
    side = int(rng.integers(short // 6, short // 4 + 1))
    x0 = int(rng.integers(0, canvas.width - side + 1))
    y0 = int(rng.integers(0, canvas.height - side + 1))
    area = np.array([x0, y0, x0 + side, y0 + side], np.float32)
    if any(_intersects(area, region) for region in taken):
        return None
    members = [
        _place(
            canvas,
            rng,
            target,
            (0.03, 0.05),
            region=(x0, y0, x0 + side, y0 + side),
            min_visible=0.0,
            ignored=True,
        )
        for _ in range(int(rng.integers(5, 10)))
    ]
    if None in members:
        return None
    boxes = np.stack([canvas.boxes[i] for i in members])
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


def _intersects(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


_SCENES = {
    "counting": _counting_scene,
    "grounding": _grounding_scene,
    "detection": _detection_scene,
    "ocr": _ocr_scene,
    "crowd": _crowd_scene,
}


# ---------------------------------------------------------------------------------------------
# Rendering and packaging.


def _finish(
    canvas: _Canvas,
    layout: _Layout,
    rng: np.random.Generator,
    task: str,
    index: int,
    config: SyntheticConfig,
) -> Scene:
    """Renders the canvas and packs the annotation into the example dict."""
    background = rng.integers(200, 256, 3)
    palette = np.stack(canvas.colors + [background])  # owner -1 selects the background.
    image = palette[canvas.owner]
    if config.noise:
        image = image + rng.integers(-config.noise, config.noise + 1, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)

    order = sorted(layout.annotated, key=lambda i: (canvas.boxes[i][1], canvas.boxes[i][0]))
    boxes = np.array([canvas.boxes[i] for i in order], np.float32).reshape(-1, 4)
    example = {
        "image": image,
        "image_id": index,
        "task": task,
        "query": layout.query,
        "boxes": boxes,
        "labels": np.array([canvas.labels[i] for i in order], np.int64),
        "points": (boxes[:, :2] + boxes[:, 2:]) / 2,
        "text": layout.text,
        "ignore_boxes": np.array(layout.ignore_boxes, np.float32).reshape(-1, 4),
    }
    visible = canvas.visible_fractions()
    objects = tuple(
        SceneObject(label, box, float(v), ignored)
        for label, box, v, ignored in zip(
            canvas.labels, canvas.boxes, visible, canvas.ignored, strict=True
        )
    )
    return Scene(example, objects)


def _stable_id(name: str) -> int:
    """A seed component from a name that, unlike `hash`, is the same in every process."""
    return zlib.crc32(name.encode())
