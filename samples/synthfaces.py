"""Write a folder-per-identity tree of synthetic face chips (facekd.faces.synthfaces).

    python samples/synthfaces.py --out /tmp/faces --identities 200 --images 8 --seed 0

Folders are named after identity numbers from --first (default 1000): 1000/, 1001/, ...; each
holds 0000.png, 0001.png, ... (112x112 RGB). The faces are procedural cartoons of nobody: a test
fixture and demo data source, not a face dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facekd.errors import FacekdError
from facekd.faces.synthfaces import write_tree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="new (or empty) output directory")
    ap.add_argument("--identities", type=int, default=200, help="how many identities")
    ap.add_argument("--images", type=int, default=8, help="images per identity")
    ap.add_argument("--seed", type=int, default=0, help="render seed (same seed, same bytes)")
    ap.add_argument("--first", type=int, default=1000, help="first identity number")
    ap.add_argument("--format", default="png", choices=["png", "jpg"], help="image file format")
    args = ap.parse_args(argv)
    if args.identities < 1:
        ap.error("--identities must be >= 1")
    try:
        out = write_tree(args.out, range(args.first, args.first + args.identities), args.images,
                         seed=args.seed, fmt=args.format)
    except FacekdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.identities} identities x {args.images} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
