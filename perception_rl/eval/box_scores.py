"""Per-box confidence from the decoder: each box's sequence likelihood.

An LLM detector emits no scores, so PR1 scores every box 1.0 and COCO AP becomes a
single-operating-point number. An alternative protocol (data_eval.md §2.4) ranks each box by the
likelihood of the tokens that wrote it: exp(mean log p) over the tokens overlapping its
coordinates `"bbox_2d": [x1, y1, x2, y2]` in the completion. Boxes are found in output order,
each search starting after the previous box, so they line up with the parsed predictions; a box
whose text cannot be found (e.g. coordinates written as floats) gets the whole completion's
likelihood.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def token_char_spans(pieces: Sequence[str]) -> np.ndarray:
    """[n, 2] (start, end) character offsets of each decoded token piece in their join."""
    ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    return np.stack([ends - np.array([len(p) for p in pieces], np.int64), ends], axis=1)


def box_likelihoods(
    completion: str, pieces: Sequence[str], logprobs: np.ndarray, boxes: np.ndarray
) -> list[float]:
    """The likelihood of each box's coordinate tokens.

    Args:
      completion: the decoded completion, equal to `"".join(pieces)`.
      pieces: each generated token decoded on its own (as the completion was decoded).
      logprobs: [n] log p of each generated token under the policy.
      boxes: [m, 4] the parsed boxes in output order, in the policy's numbers (as written).

    Returns:
      m scores in (0, 1]; the whole completion's likelihood for every box when the pieces do
      not join to the completion (a multi-byte character split across tokens).
    """
    logprobs = np.asarray(logprobs, np.float64)[: len(pieces)]
    spans = token_char_spans(pieces)
    whole = float(np.exp(np.mean(logprobs))) if len(logprobs) else 1.0
    if "".join(pieces) != completion:  # Pieces split a character: offsets would be wrong.
        return [whole] * len(np.asarray(boxes).reshape(-1, 4))
    scores, cursor = [], 0
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        match = _box_pattern(box).search(completion, cursor)
        if match is None:
            scores.append(whole)
            continue
        cursor = match.end()
        covered = (spans[:, 0] < match.end()) & (spans[:, 1] > match.start())
        scores.append(float(np.exp(np.mean(logprobs[covered]))) if covered.any() else whole)
    return scores


def _box_pattern(box: np.ndarray) -> re.Pattern:
    numbers = [f"{int(v)}" if float(v).is_integer() else re.escape(repr(float(v))) for v in box]
    return re.compile(r"\[\s*" + r"\s*,\s*".join(rf"{n}(?:\.0*)?" for n in numbers) + r"\s*\]")


def detection_scores(
    completion: str, pieces: Sequence[str], logprobs: np.ndarray, vocabulary: dict[str, int]
) -> list[float]:
    """Scores of the boxes `DetectionTask.predict` keeps from `completion`, in its order."""
    from perception_rl.tasks import formats

    boxes, _ = formats.read_json_boxes(completion, vocabulary)
    return box_likelihoods(completion, pieces, logprobs, boxes)
