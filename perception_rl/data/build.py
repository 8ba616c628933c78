"""Builds a real dataset from the files a user downloaded:

    python -m perception_rl.data.build NAME[/CONFIG] --manual_dir=RAW --data_dir=OUT

NAME is one of `datasets.BUILDERS` (refcoco, crowdhuman, coco_detection, ...); `--list` prints
each with its configs. The build streams the raw files (memory bounded whatever the size),
shows TFDS' progress bars, writes array_record with no TensorFlow, and is idempotent: a
finished build is reused, an interrupted one leaves only a temporary directory that TFDS
removes. It ends with one line per split: examples written, skipped, and why.

Builder options: `--option max_missing_fraction=0.1` (pixmo_count); the UAVDT stride is a config
(`uavdt/stride5`).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

from perception_rl.data import datasets


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perception_rl.data.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("name", nargs="?", help="NAME or NAME/CONFIG, e.g. refcoco/refcoco_unc")
    parser.add_argument("--manual_dir", help="folder holding the downloaded raw files")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="output folder")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder option (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list datasets and configs")
    args = parser.parse_args(argv)
    if not args.list and not (args.name and args.manual_dir):
        parser.error("NAME and --manual_dir are required (or --list).")
    return args


def options(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as builder keyword arguments (values as Python literals if they parse)."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option {pair!r}: expected KEY=VALUE.")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return parsed


def build(name: str, manual_dir: str, data_dir: str, **builder_options):
    """Builds `name` (reusing a finished build); returns the builder."""
    import tensorflow_datasets as tfds

    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
        raise SystemExit(f"--manual_dir {manual_dir} is not a folder.")
    builder = datasets.builder(name, data_dir=data_dir, **builder_options)
    if builder.is_prepared():
        print(f"{builder.info.full_name}: already built in {builder.data_dir}; reused.")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def summary(builder) -> list[str]:
    """One line per split: examples written, skipped and why (from the build's metadata)."""
    skipped = builder.info.metadata.get("skipped", {})
    lines = []
    for split, info in builder.info.splits.items():
        reasons = skipped.get(split, {})
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        line = f"{builder.info.full_name} {split}: {info.num_examples} examples"
        line += f", {sum(reasons.values())} skipped" + (f" ({why})" if why else "")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in datasets.BUILDERS:
            print(f"{name}: {', '.join(datasets.config_names(name)) or '(one config)'}")
        return 0
    builder = build(args.name, args.manual_dir, args.data_dir, **options(args.option))
    print("\n".join(summary(builder)))
    print(
        f"Read it with perception_rl.data.datasets.source({args.name!r}, SPLIT, "
        f"data_dir={args.data_dir!r})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
