#!/usr/bin/env python3
"""A long-text corpus for the `embed` benchmarks: real English prose, most texts over MiniLM's
128 tokens, from Debian's fortune files (package `fortunes`; tools/fetch-fortunes.sh installs it).

    python3 tools/anchors/long_texts.py [--count 600] [--out .cache/data/fortunes/long.txt]

Every `%`-separated cookie of every file under /usr/share/games/fortunes/ (no `.dat`/`.u8`
companions, no links), whitespace collapsed to single spaces; those of 500 to 2 500 characters are
ordered by the sha256 of their text and the first --count written one per line. The same package
gives the same file. Prints the path. Standard library only.
"""

import argparse
import hashlib
import os
from pathlib import Path

SOURCE = Path("/usr/share/games/fortunes")
ROOT = Path(__file__).resolve().parents[2]


def cookies():
    for path in sorted(SOURCE.iterdir()):
        if "." in path.name or path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for entry in text.split("\n%\n"):
            cookie = " ".join(entry.split())
            if cookie:
                yield cookie


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache/data/fortunes/long.txt")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"long_texts.py: no {SOURCE}; install Debian's `fortunes` package")
    long = sorted({c for c in cookies() if 500 <= len(c) <= 2500},
                  key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    if len(long) < args.count:
        raise SystemExit(f"long_texts.py: only {len(long)} cookies of 500-2 500 characters")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(long[:args.count]) + "\n", encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
