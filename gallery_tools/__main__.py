"""``python -m gallery_tools check|stats PATH``: verify or describe a gallery on disk.

``check`` exits 0 when index, vectors and SQLite agree, 1 with a report otherwise, and 2 when the
gallery cannot be opened at all (missing or corrupt files).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

from gallery_tools.errors import GalleryError
from gallery_tools.gallery import Gallery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gallery_tools", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "stats"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    try:
        with Gallery.open(args.path, verify=args.command != "check") as g:
            if args.command == "stats":
                print(json.dumps(g.stats(), indent=2))
                return 0
            report = g.check()
            print(f"{args.path}: generation {g.generation}, {len(g)} faces: {report}")
            return 0 if report.ok else 1
    except (GalleryError, sqlite3.DatabaseError, OSError) as exc:  # unreadable: not a report
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
