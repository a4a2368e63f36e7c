"""Classify every image in a folder and print a per-label count: the smallest useful program on the library API.

python examples/classify_folder.py MODEL.tflite PHOTOS_DIR [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import collections
import sys

import edgecls
from edgecls.model.images import expand_image_paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="below this, count the image as 'unsure'")
    args = parser.parse_args()

    counts: collections.Counter[str] = collections.Counter()
    try:
        clf = edgecls.Classifier(args.model)
    except edgecls.EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with clf:
        for path in expand_image_paths([args.folder]):
            try:
                best = clf.classify(path, top_k=1)[0]
            except edgecls.ImageError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            counts[best.label if best.score >= args.threshold else "unsure"] += 1
    for label, n in counts.most_common():
        print(f"{n:6d}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
