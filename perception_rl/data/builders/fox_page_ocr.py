"""TFDS builder `fox_page_ocr`: the Fox benchmark's page OCR (Perception-R1's PageOCR).

manual_dir layout (focus_benchmark_test.zip of huggingface.co/datasets/ucaslcl/Fox_benchmark_data,
unzipped; the folder itself or its parent may be manual_dir):

    <manual_dir>/focus_benchmark_test/en_page_ocr.json, en_pdf_png/<image>   (config `en`)
    <manual_dir>/focus_benchmark_test/cn_page_ocr.json, cn_pdf_png/<image>   (config `cn`)

Each item is `{"image": file, "conversations": [{"value": prompt}, {"value": page text}]}`;
`text` is the page text as given, `image_id` the item's index. One split, "test"
(112 English / 100 Chinese pages).
"""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import tensorflow_datasets as tfds

from perception_rl.data.builders import raw

PUBLISHED = "https://huggingface.co/datasets/ucaslcl/Fox_benchmark_data (focus_benchmark_test.zip)"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])


@dataclasses.dataclass(eq=False)
class FoxConfig(tfds.core.BuilderConfig):
    """language: the file prefix, "en" or "cn"."""

    language: str = "en"


class FoxPageOcr(raw.RawBuilder):
    """Fox benchmark page-level OCR (English or Chinese pages)."""

    name = "fox_page_ocr"
    TASK = "ocr"
    HOMEPAGE = "https://github.com/ucaslcl/Fox"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        FoxConfig(name="en", language="en", description="112 English pages."),
        FoxConfig(name="cn", language="cn", description="100 Chinese pages."),
    ]

    def _label_names(self, root):
        return []

    def _splits(self, root):
        folder = root / "focus_benchmark_test"
        folder = folder if folder.exists() else root
        language = self.builder_config.language
        annotations = raw.require(folder / f"{language}_page_ocr.json", PUBLISHED)
        return {"test": self._examples(folder, annotations, f"{language}_pdf_png")}

    def _examples(self, folder, path, images):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise raw.RawDataError(f"{path}: not JSON ({e}).") from e
        for index, item in enumerate(items):
            where = f"{path} item {index}"
            try:
                name, text = f"{images}/{item['image']}", str(item["conversations"][1]["value"])
            except (KeyError, IndexError, TypeError) as e:
                raise raw.RawDataError(
                    f"{where}: needs image and two conversations ({e!r})."
                ) from e
            image, width, height = raw.image_bytes(folder / name, PUBLISHED)
            yield (
                index,
                raw.example(
                    image=image,
                    image_id=index,
                    image_name=name,
                    task=self.TASK,
                    width=width,
                    height=height,
                    text=text,
                ),
            )


Builder = FoxPageOcr
