"""Host-side parsers: completion text -> padded numpy arrays, validity masks, format flags.

Every public function here is total: any ``str`` (arbitrary unicode, lone surrogates, 100 000
characters, garbage or deeply nested JSON, numbers that overflow) yields arrays and never raises.
Regexes are written so that they cannot backtrack catastrophically (possessive quantifiers, no
nested unbounded repeats), and no model output is ever evaluated.

Padded sizes are bucketed to powers of two (`bucket`) so the jitted reward code compiles once per
bucket instead of once per batch. Packed sets keep their valid elements first.

Longer than ~400 lines on purpose: every answer syntax's parser (Qwen2-VL spans, Qwen2.5-VL
JSON, counts, DIP tags) shares the bounded regexes and the padding rules above.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np

MIN_BUCKET = 8  # smallest padded set size; fewer distinct shapes means fewer compilations

# A signed decimal (the numbers PR1's box regexes accept). Possessive: linear on digit runs.
NUMBER = r"-?\d++(?:\.\d++)?"
_PAIR = rf"\(\s*({NUMBER})\s*,\s*({NUMBER})\s*\)"
_QWEN2_BOX = rf"{_PAIR}\s*,\s*{_PAIR}"  # (x1,y1),(x2,y2)

# PR1 grounding parse: the first match of the first pattern (in this order) that occurs.
_FIRST_BOX_PATTERNS = tuple(
    re.compile(p)
    for p in (
        rf"\[\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*\]",
        rf"\(\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*\)",
        _QWEN2_BOX,
    )
)
_BOX_SPAN = re.compile(rf"<\|box_start\|>\s*{_QWEN2_BOX}\s*<\|box_end\|>")

# Qwen2-VL grounding template, the intended (strict) form of PR1's format reward.
_GROUNDING_TEMPLATE = re.compile(
    rf"<\|object_ref_start\|>[^<]*+<\|object_ref_end\|><\|box_start\|>\s*{_QWEN2_BOX}\s*"
    r"<\|box_end\|><\|im_end\|>"
)
# PR1's released grounding regex has unescaped `|`, so it is an alternation whose branches,
# matched at the start, accept any text beginning with one of these fragments.
_PR1_LENIENT_PREFIXES = (
    "<",
    ">",
    "object_ref_start",
    "object_ref_end",
    "box_start",
    "box_end",
    "im_end",
)
# PR1's counting gate (properly escaped), matched at the start of the text.
_COUNTING_TEMPLATE = re.compile(
    r"<\|object_ref_start\|>[^<]*+<\|object_ref_end\|>"
    r"(?:<\|box_start\|>[^<]*+<\|box_end\|>)++<\|im_end\|>"
)
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Returns the smallest power of two that is >= max(n, minimum, 1)."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["boxes", "valid", "labels", "num_valid", "num_elements", "parsed"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class BoxSet:
    """Boxes parsed from a batch of completions, padded to ``[rows, N, 4]``.

    A pytree, so jitted reward code takes it whole.

    Attributes:
      boxes: float32 ``[rows, N, 4]`` as (x1, y1, x2, y2); valid boxes first, zeros after.
      valid: bool ``[rows, N]``.
      labels: int32 ``[rows, N]`` vocabulary index, -1 where there is none.
      num_valid: int32 ``[rows]`` valid elements found; may exceed N when a cap truncated them.
      num_elements: int32 ``[rows]`` elements seen, valid or not.
      parsed: bool ``[rows]`` whether the container parsed (e.g. the text was a JSON list).
    """

    boxes: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    num_valid: np.ndarray
    num_elements: np.ndarray
    parsed: np.ndarray


def pack(
    items: Sequence[np.ndarray],
    rows: int,
    *,
    width: int,
    cap: int | None = None,
    minimum: int = MIN_BUCKET,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks variable-length ``[n_i, d]`` arrays into a zero-padded ``[rows, N, d]`` array.

    Args:
      items: one ``[n_i, d]`` array per row (``len(items) <= rows``); extra rows stay empty.
      rows: padded number of rows.
      width: d, the trailing size (needed when there are no items).
      cap: keep at most this many leading elements per row.
      minimum: smallest padded N.
      dtype: dtype of the padded values.

    Returns:
      ``(values, valid)``: ``[rows, N, d]`` of ``dtype`` with N = bucket(longest kept row) and the
      bool ``[rows, N]`` mask of filled slots.
    """
    counts = [len(x) for x in items]
    flat = np.concatenate(items).reshape(-1, width) if sum(counts) else np.zeros((0, width))
    row_ids = np.repeat(np.arange(len(items)), counts)
    return pack_flat(flat, row_ids, rows, cap=cap, minimum=minimum, dtype=dtype)


def pack_flat(
    flat: np.ndarray,
    row_ids: np.ndarray,
    rows: int,
    *,
    cap: int | None = None,
    minimum: int = MIN_BUCKET,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """`pack` for elements given flat: ``flat[k]`` belongs to row ``row_ids[k]`` (sorted)."""
    counts = np.bincount(row_ids, minlength=rows)
    slot = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    if cap is not None:
        kept = slot < cap
        flat, row_ids, slot = flat[kept], row_ids[kept], slot[kept]
    size = bucket(slot.max(initial=-1) + 1, minimum)
    values = np.zeros((rows, size, flat.shape[1]), dtype)
    valid = np.zeros((rows, size), bool)
    values[row_ids, slot] = flat
    valid[row_ids, slot] = True
    return values, valid


def box_is_valid(values: np.ndarray, max_abs: float, *, ordered: bool = True) -> np.ndarray:
    """Per-box validity of ``[..., 4]`` float64 coordinates.

    A box is valid when every coordinate is finite with magnitude <= ``max_abs`` (beyond that a
    number is not a coordinate, and float32 areas would overflow) and, if ``ordered``, when
    x2 >= x1 and y2 >= y1 (an inverted box is invalid; a zero-width one is allowed).
    """
    with np.errstate(invalid="ignore"):
        ok = (np.abs(values) <= max_abs).all(-1)  # False for nan / inf
        if ordered:
            ok &= (values[..., 2] >= values[..., 0]) & (values[..., 3] >= values[..., 1])
    return ok


def _to_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return float("inf") if value > 0 else float("-inf")


def _box_set(
    row_of: Sequence[int],
    coords: list[Sequence],
    labels: Sequence[int],
    num_elements: np.ndarray,
    parsed: np.ndarray,
    *,
    rows: int,
    max_boxes: int,
    max_abs: float,
    ordered: bool,
) -> BoxSet:
    """Builds a `BoxSet` from flat candidate lists (one entry per candidate element)."""
    values = itertools.chain.from_iterable(coords)
    try:
        flat = np.fromiter(values, np.float64, count=4 * len(coords)).reshape(-1, 4)
    except OverflowError:  # an int beyond float range
        flat = np.array([[_to_float(v) for v in c] for c in coords], np.float64).reshape(-1, 4)
    keep = box_is_valid(flat, max_abs, ordered=ordered)
    row_ids = np.asarray(row_of, np.int64)[keep]
    flat = np.concatenate([flat[keep], np.asarray(labels, np.float64).reshape(-1, 1)[keep]], 1)
    # flat columns: x1, y1, x2, y2, label.
    values, valid = pack_flat(flat, row_ids, rows, cap=max_boxes)
    return BoxSet(
        boxes=values[..., :4],
        valid=valid,
        labels=np.where(valid, values[..., 4], -1).astype(np.int32),
        num_valid=np.bincount(row_ids, minlength=rows).astype(np.int32),
        num_elements=_pad(num_elements, rows).astype(np.int32),
        parsed=_pad(parsed, rows).astype(bool),
    )


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + x.shape[1:], x.dtype)
    out[: len(x)] = x
    return out


def strip_end_tokens(text: str) -> str:
    """Removes trailing whitespace and end-of-turn special tokens (``<|im_end|>`` etc.)."""
    if not text or (text[-1] != ">" and not text[-1].isspace()):
        return text  # the common case, without a scan
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in END_TOKENS if text.endswith(t, 0, end)), None)
        if token is None:
            return text[:end]
        end -= len(token)


def load_json_list(text: str) -> list | None:
    """Parses a completion as a JSON list, or returns None.

    Code-fence markers are removed anywhere (as PR1 does) and trailing end-of-turn tokens are
    tolerated; anything else around the JSON makes it invalid. NaN / Infinity literals parse
    (to non-finite floats that the box checks reject); integers longer than Python's
    int-string limit make the JSON invalid.
    """
    if "```" in text:
        text = text.replace("```json", "").replace("```", "")
    body = strip_end_tokens(text)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, list) else None


def json_boxes(
    texts: Sequence[str | None],
    *,
    rows: int,
    max_boxes: int,
    max_abs: float,
    vocabulary: Mapping[str, int] | None = None,
) -> BoxSet:
    """Qwen2.5-VL JSON: ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, ...]`` per text.

    An element is valid when it is an object whose ``bbox_2d`` is a list of four JSON numbers
    forming a valid box (`box_is_valid`) and, when ``vocabulary`` is given, whose ``label`` is
    a string in it. ``None`` texts (e.g. a missing block) count as unparsed.

    Args:
      texts: completions (or blocks of them).
      rows: padded batch size (>= len(texts)).
      max_boxes: at most this many valid boxes per row enter the arrays (all are counted).
      max_abs: largest accepted coordinate magnitude.
      vocabulary: label -> index; None ignores labels.

    Returns:
      A `BoxSet`.
    """
    # Comprehensions over the flattened elements of the whole batch: the per-element work is
    # a few C-level type checks and dict lookups, no Python loop bodies.
    lists = [load_json_list(t) if t is not None else None for t in texts]
    num_elements = np.array([len(x) if x is not None else 0 for x in lists], np.int64)
    items = list(itertools.chain.from_iterable(x for x in lists if x))
    row_of = np.repeat(np.arange(len(texts)), num_elements)
    boxes = [x.get("bbox_2d") if type(x) is dict else None for x in items]
    keep = [type(b) is list and len(b) == 4 for b in boxes]
    if vocabulary is None:
        labels = [-1] * len(items)
    else:
        names = [x.get("label") if type(x) is dict else None for x in items]
        labels = [vocabulary.get(n, -1) if type(n) is str else -1 for n in names]
        keep = [k and label >= 0 for k, label in zip(keep, labels)]
    coords = list(itertools.compress(boxes, keep))
    if not set(map(type, itertools.chain.from_iterable(coords))) <= {int, float}:
        # Rare slow path: drop candidates holding strings, bools, lists, null...
        numeric = iter([all(type(v) in (int, float) for v in c) for c in coords])
        keep = [k and next(numeric) for k in keep]
        coords = list(itertools.compress(boxes, keep))
    keep = np.array(keep, bool)
    return _box_set(
        row_of[keep],
        coords,
        np.array(labels, np.int64)[keep],
        num_elements,
        np.array([x is not None for x in lists], bool),
        rows=rows,
        max_boxes=max_boxes,
        max_abs=max_abs,
        ordered=True,
    )


def qwen2_boxes(texts: Sequence[str], *, rows: int, max_boxes: int, max_abs: float) -> BoxSet:
    """Every ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` span (Qwen2-VL, 0-1000 coordinates).

    A span whose inside is not exactly that pair of signed-decimal pairs (whitespace allowed)
    is skipped, as PR1 skips spans it cannot parse. Inverted boxes are kept (their centres are
    still points); only non-finite or out-of-range coordinates invalidate a span.
    """
    row_of, coords = [], []
    num_elements = np.zeros(len(texts), np.int64)
    for i, text in enumerate(texts):
        spans = _BOX_SPAN.findall(text)
        num_elements[i] = len(spans)
        row_of.extend([i] * len(spans))
        coords.extend([_to_float(v) for v in span] for span in spans)
    return _box_set(
        row_of,
        coords,
        [-1] * len(coords),
        num_elements,
        np.ones(len(texts), bool),
        rows=rows,
        max_boxes=max_boxes,
        max_abs=max_abs,
        ordered=False,
    )


def first_box(texts: Sequence[str], *, rows: int, max_abs: float) -> BoxSet:
    """PR1's grounding parse: the first ``[a,b,c,d]``, else ``(a,b,c,d)``, else ``(a,b),(c,d)``.

    ``<|endoftext|>`` is removed first. Unlike PR1, coordinates are never rescaled: they are in
    the policy's own convention (0-1000 for Qwen2-VL, pixels for Qwen2.5-VL). No match, an
    inverted box or an out-of-range number leaves the row without a valid box (IoU 0).
    """
    row_of, coords = [], []
    for i, text in enumerate(texts):
        text = text.replace("<|endoftext|>", "")
        match = next(filter(None, (p.search(text) for p in _FIRST_BOX_PATTERNS)), None)
        if match is not None:
            row_of.append(i)
            coords.append([_to_float(v) for v in match.groups()])
    found = np.bincount(np.asarray(row_of, np.int64), minlength=len(texts)).astype(bool)
    return _box_set(
        row_of,
        coords,
        [-1] * len(coords),
        found.astype(np.int64),
        found,
        rows=rows,
        max_boxes=1,
        max_abs=max_abs,
        ordered=True,
    )


def grounding_format(
    texts: Sequence[str], mode: str, *, rows: int, max_abs: float = np.inf
) -> np.ndarray:
    """Grounding format flags, float32 ``[rows]`` in {0, 1} (0 on padding rows).

    Modes:
      ``strict``: the text (``<|endoftext|>`` removed) starts with the full Qwen2-VL template
        ``<|object_ref_start|>…<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|><|im_end|>``.
      ``json``: Qwen2.5-VL, the text (code fences tolerated) is a non-empty JSON list of
        ``{"bbox_2d": [x1, y1, x2, y2], ...}`` objects, every box valid (`box_is_valid`
        with ``max_abs``).
      ``pr1_lenient``: PR1's released (unescaped) regex: the text starts with ``<``, ``>`` or one
        of the special-token names.
    """
    texts = [t.replace("<|endoftext|>", "") for t in texts]
    if mode == "strict":
        flags = [_GROUNDING_TEMPLATE.match(t) is not None for t in texts]
    elif mode == "pr1_lenient":
        flags = [t.startswith(_PR1_LENIENT_PREFIXES) for t in texts]
    elif mode == "json":
        found = json_boxes(texts, rows=len(texts), max_boxes=1, max_abs=max_abs)
        flags = (found.num_elements > 0) & (found.num_valid == found.num_elements)
    else:
        raise ValueError(
            f"unknown grounding format_check {mode!r}; expected 'strict', 'json' or 'pr1_lenient'"
        )
    return _pad(np.asarray(flags, np.float32).reshape(len(texts)), rows)


def counting_format(texts: Sequence[str], *, rows: int) -> np.ndarray:
    """PR1's counting gate, float32 ``[rows]`` in {0, 1}: the text starts with
    ``<|object_ref_start|>[^<]*<|object_ref_end|>(<|box_start|>[^<]*<|box_end|>)+<|im_end|>``."""
    flags = np.array([_COUNTING_TEMPLATE.match(t) is not None for t in texts], np.float32)
    return _pad(flags.reshape(len(texts)), rows)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """``<tag>…</tag>`` blocks of a batch of completions.

    Attributes:
      strict: bool ``[rows]``: after trailing end tokens are stripped, the whole text is
        exactly the tags' blocks in order, separated only by whitespace, each tag exactly once.
      contents: per tag, the text inside its first complete block, or None when absent.
    """

    strict: np.ndarray
    contents: dict[str, list[str | None]]


def tagged_blocks(texts: Sequence[str], tags: Sequence[str], *, rows: int) -> Blocks:
    """Finds ``<tag>…</tag>`` blocks (e.g. think / look / answer) in each text."""
    strict = np.zeros(rows, bool)
    contents = {tag: [] for tag in tags}
    for i, text in enumerate(texts):
        body = strip_end_tokens(text)
        spans = []
        for tag in tags:
            start = body.find(f"<{tag}>")
            end = body.find(f"</{tag}>", start + len(tag) + 2) if start >= 0 else -1
            contents[tag].append(body[start + len(tag) + 2 : end] if end >= 0 else None)
            spans.append((start, end + len(tag) + 3) if end >= 0 else None)
        once = all(body.count(f"<{t}>") == 1 and body.count(f"</{t}>") == 1 for t in tags)
        if once and None not in spans:
            gaps = [body[a[1] : b[0]] for a, b in itertools.pairwise(spans)]
            in_order = all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            strict[i] = (
                in_order
                and spans[0][0] == 0
                and spans[-1][1] == len(body)
                and all(not g or g.isspace() for g in gaps)
            )
    return Blocks(strict=strict, contents=contents)


def collapse_whitespace(text: str) -> str:
    """Collapses every whitespace run to one space and strips both ends."""
    return " ".join(text.split())


def code_points(
    texts: Sequence[str], *, rows: int, max_chars: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unicode code points of each text, truncated to ``max_chars`` and padded.

    Returns:
      ``(codes, lengths)``: int32 ``[rows, L]`` (L = bucket of the longest kept text, padding
      -1) and int32 ``[rows]`` *full* lengths (before truncation).
    """
    # surrogatepass: lone surrogates are legal in a Python str and become their own code point.
    arrays = [
        np.frombuffer(t[:max_chars].encode("utf-32-le", "surrogatepass"), "<u4")[:, None]
        for t in texts
    ]
    values, valid = pack(arrays, rows, width=1, minimum=16, dtype=np.int32)
    codes = np.where(valid, values[..., 0], -1).astype(np.int32)
    return codes, _pad(np.array([len(t) for t in texts], np.int32), rows)
