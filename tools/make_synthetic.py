"""Write deterministic synthetic legacy shards.

Example: python tools/make_synthetic.py /tmp/syn --shards 10 30 --rows 5000 --format npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmpool.testing.synthetic import FORMATS, make_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to create the shard directories in")
    parser.add_argument("--shards", type=int, nargs="+", required=True, help="shards per directory, one per dir")
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[5000],
        help="rows per shard: one value, or one per directory",
    )
    parser.add_argument("--format", default="npz", choices=FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--dir-names", nargs="+", default=None, help="names of the directories")
    args = parser.parse_args(argv)

    rows = args.rows[0] if len(args.rows) == 1 else args.rows
    dirs = make_synthetic(
        args.root,
        args.shards,
        rows,
        fmt=args.format,
        seed=args.seed,
        channels=args.channels,
        dir_names=args.dir_names,
    )
    per_dir_rows = args.rows * len(dirs) if len(args.rows) == 1 else args.rows
    total_bytes = total_rows = 0
    for d, count, n in zip(dirs, args.shards, per_dir_rows):
        size = sum(p.stat().st_size for p in d.glob(f"shard_*.{args.format}"))
        total_bytes += size
        total_rows += count * n
        print(f"{d}: {count} shards x {n} rows = {count * n} rows, {size:,} bytes")
    print(f"total: {len(dirs)} dirs, {sum(args.shards)} shards, {total_rows} rows, {total_bytes:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
