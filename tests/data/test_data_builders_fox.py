"""`fox_page_ocr` builder: Fox page-OCR JSON fixtures (English and Chinese), RGBA PNG pages."""

import json

import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw

PROMPT = "<image>\nOCR this image: "


def write_fox(root):
    folder = root / "focus_benchmark_test"
    for language, texts in (("en", ["Title\n\nBody  text.", "Page two"]), ("cn", ["第一页 文字"])):
        items = []
        for i, text in enumerate(texts):
            name = f"{language}_{i + 1}.png"
            write_image(folder / f"{language}_pdf_png" / name, 40 + i, 30, mode="RGBA", fmt="PNG")
            items.append(
                {
                    "image": name,
                    "len": len(text),
                    "conversations": [
                        {"from": "human", "value": PROMPT},
                        {"from": "gpt", "value": text},
                    ],
                }
            )
        (folder / f"{language}_page_ocr.json").write_text(json.dumps(items, ensure_ascii=False))
    return root


def test_english_and_chinese_pages_keep_their_text_as_given(tmp_path):
    root = write_fox(tmp_path / "raw")
    build("fox_page_ocr/en", root, tmp_path / "out")
    first, second = read("fox_page_ocr/en", "test", tmp_path / "out")
    assert (first["text"], second["text"]) == ("Title\n\nBody  text.", "Page two")
    assert (first["image_id"], first["width"], first["height"]) == (0, 40, 30)
    assert second["image"].shape == (30, 41, 3)  # RGBA page -> RGB
    assert first["image_name"] == "en_pdf_png/en_1.png" and first["task"] == "ocr"
    build("fox_page_ocr/cn", root / "focus_benchmark_test", tmp_path / "out")  # folder itself
    (page,) = read("fox_page_ocr/cn", "test", tmp_path / "out")
    assert page["text"] == "第一页 文字"


def test_item_without_answer_names_file_and_item(tmp_path):
    root = write_fox(tmp_path / "raw")
    path = root / "focus_benchmark_test" / "en_page_ocr.json"
    items = json.loads(path.read_text())
    items[1]["conversations"] = items[1]["conversations"][:1]
    path.write_text(json.dumps(items))
    with pytest.raises(raw.RawDataError, match=r"en_page_ocr.json item 1"):
        build("fox_page_ocr/en", root, tmp_path / "out")
    (root / "focus_benchmark_test" / "cn_page_ocr.json").unlink()
    with pytest.raises(raw.MissingFileError, match=r"cn_page_ocr.json.*ucaslcl/Fox"):
        build("fox_page_ocr/cn", root, tmp_path / "out")
