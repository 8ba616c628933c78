"""Page / line OCR (PageOCR style), Perception-R1 seed_spec A6.

Prompt: `OCR this image.` (the paper's Table 8 training text; PR1's eval script sends
`<image>\\nOCR this image: ` instead). Answer: the text itself, lines joined by newlines, the
same in both families (no coordinates). Target `{"text": str}`; reward "ocr" (1 − normalised
edit distance after whitespace collapsing); metrics: edit distance (lower is better), token-set
F1 / precision / recall, BLEU and METEOR (NaN when WordNet is not installed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from perception_rl import metrics as eval_metrics
from perception_rl.rewards import parse
from perception_rl.tasks.base import (
    Example,
    ImageGeometry,
    PromptedTask,
    check_family,
)

PROMPT = "OCR this image."


@dataclasses.dataclass(frozen=True)
class OcrTask(PromptedTask):
    """The text in the image (`example["text"]`)."""

    name: str = "ocr"
    reward: str = "ocr"
    metric_names: tuple[str, ...] = ("edit_distance", "f1", "precision", "recall", "bleu", "meteor")
    # What a predictions file must hold for `metrics` (eval.predictions).
    prediction_keys: ClassVar[tuple[str, ...]] = ("text",)
    table_columns: tuple[tuple[str, str], ...] = (
        ("edit_distance", "ED↓"),
        ("f1", "F1"),
        ("precision", "Precision"),
        ("recall", "Recall"),
        ("bleu", "BLEU"),
        ("meteor", "METEOR"),
    )
    skip_special_tokens: bool = True
    prompt: str = PROMPT

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        check_family(family)
        return {"text": str(example["text"])}

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        check_family(family)
        return str(example["text"])

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        # Special tokens stay in decoded completions (the box tasks need them); drop the ends.
        return {"text": parse.strip_end_tokens(completion.replace("<|endoftext|>", "")).strip()}

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        scores = eval_metrics.ocr_metrics(
            [str(p.get("text", "")) for p in predictions], [str(e["text"]) for e in examples]
        )
        # Without WordNet there is no METEOR (ocr_metrics warns why): NaN keeps the keys fixed.
        return {name: scores.get(name, math.nan) for name in self.metric_names}
