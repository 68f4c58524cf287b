"""Rebuild the bundled default model: python tools/make_bundled_model.py inspectd/bundled_model

Trains the small CNN on generated images (inspectd.train.bundled.Recipe), exports it to LiteRT, checks
the conversion, and writes a registry version folder. The output is committed to the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from inspectd.train.bundled import Recipe, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--version",
        default="bundled-3",
        help="a new name whenever the weights change: versions are immutable, and registries that "
        "installed the old weights under this name refuse different ones",
    )
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--quantize", choices=["none", "dynamic", "int8"], default=Recipe.quantize)
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args()
    if args.out.exists() and args.force:
        shutil.rmtree(args.out)
    meta = build(args.out, args.version, Recipe(epochs=args.epochs, quantize=args.quantize))
    print(json.dumps(meta.model_dump(mode="json")["metrics"], indent=2))


if __name__ == "__main__":
    main()
