"""The ``mmpool`` command line: ``convert``, ``inspect``, ``verify``, ``plan``, ``demo`` and ``bench``.

Each subcommand is one entry of ``COMMANDS``: ``name -> (help, add_arguments, run)``; ``run`` returns the exit code.
Add a subcommand by adding an entry. MmpoolError becomes a one-line ``mmpool: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmpool.convert.converter import LC0_ROWS_PER_SHARD
from mmpool.convert.sources import ORDERS
from mmpool.errors import ConfigError, MmpoolError

log = logging.getLogger("mmpool")

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- convert / inspect / verify


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="directory of shards (.npz, .npy, .pt, .h5) or of lc0 games (.gz, .tar of .gz)")
    p.add_argument("dst", help="directory for the packs and manifest (created; converted shards are skipped)")
    p.add_argument("--format", choices=["npy", "hdf5"], default="npy", help="pack file format (default npy)")
    p.add_argument("--pack-size", default="1G", help="max record bytes per pack, e.g. 512M, 2G (default 1G)")
    p.add_argument("--workers", type=int, default=1, help="packs converted in parallel (default 1)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf in float fields")
    p.add_argument("--recursive", action="store_true", help="also take the shards in subdirectories of SRC")
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="natural",
        help="order that numbers new files when the last integers of their names do not number them uniquely: "
        "natural (digit runs as numbers, default), name, mtime, number",
    )
    p.add_argument("--like", metavar="DIR", help="convert to the record schema of this converted directory")
    p.add_argument("--pad", action="append", default=[], metavar="FIELD", help="zero-pad FIELD's last axis")
    p.add_argument("--fill", action="append", default=[], metavar="FIELD=VALUE", help="add FIELD, set to VALUE")
    p.add_argument("--drop", action="append", default=[], metavar="FIELD", help="leave out FIELD")
    p.add_argument(
        "--rows-per-shard",
        type=int,
        default=LC0_ROWS_PER_SHARD,
        help=f"lc0 games: whole games per shard up to about this many rows (default {LC0_ROWS_PER_SHARD:,})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _convert(args: argparse.Namespace) -> int:
    from mmpool.convert.converter import convert

    summary = convert(
        args.src,
        args.dst,
        fmt=args.format,
        pack_size=args.pack_size,
        workers=args.workers,
        allow_nonfinite=args.allow_nonfinite,
        progress=not args.quiet,
        recursive=args.recursive,
        order=args.order,
        like=args.like,
        pad=args.pad,
        fill=args.fill,
        drop=args.drop,
        rows_per_shard=args.rows_per_shard,
    )
    print(summary)
    return 0


def _dirs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="converted directories")


def _inspect(args: argparse.Namespace) -> int:
    from mmpool.ops.check import inspect_dirs

    print(inspect_dirs(args.dirs))
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    _dirs_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _verify(args: argparse.Namespace) -> int:
    from mmpool.format.manifest import read_manifest
    from mmpool.ops.check import verify_dirs

    problems = verify_dirs(args.dirs, progress=not args.quiet)
    if problems:
        print("\n".join(problems))
        return 1
    manifests = [read_manifest(Path(d)) for d in args.dirs]
    shards = sum(len(m.shards) for m in manifests)
    records = sum(s.rows for m in manifests for s in m.shards)
    print(f"ok: {shards} shards, {records} records verified")
    return 0


# --------------------------------------------------------------------------- demo


def _plan_args(p: argparse.ArgumentParser) -> None:
    _dirs_args(p)
    p.add_argument("--max-memory-gb", type=float, default=5.0, help="memory cap, as the dataset's (default 5)")
    p.add_argument("--pool-size", type=int, help="pool entries per rank (default: the largest that fits)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size (default 1024)")
    p.add_argument("--symmetries", type=int, default=1, help="augmentation factor, e.g. 8 for Dihedral (default 1)")
    p.add_argument("--world-size", type=int, default=1, help="ranks (default 1)")
    p.add_argument("--max-open-packs", type=int, default=64, help="the dataset's bound on open packs (default 64)")
    p.add_argument(
        "--baseline-gb",
        type=float,
        help="anonymous memory of your training process before the pool (default: measured here, "
        "with torch imported; give more if your model is large)",
    )
    p.add_argument(
        "--probe",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="read random batches of records for about this long: the rate to expect when the window does not "
        "fit the page cache (default 0: no probe)",
    )


def _plan(args: argparse.Namespace) -> int:
    from mmpool.ops.sizing import size_run

    result = size_run(
        args.dirs,
        args.max_memory_gb,
        args.pool_size,
        args.workers,
        args.batch_size,
        factor=args.symmetries,
        world_size=args.world_size,
        max_open_packs=args.max_open_packs,
        baseline_gb=args.baseline_gb,
        probe_seconds=args.probe,
    )
    print(result)
    return 0 if result.fits else 1


def _demo_args(p: argparse.ArgumentParser) -> None:
    from mmpool.ops.demo import SCALES

    p.add_argument(
        "--dir", default="mmpool_demo", help="data directory (default ./mmpool_demo; kept, and reused by the next run)"
    )
    p.add_argument("--scale", choices=list(SCALES), default="small", help="data size (default small, about a minute)")
    p.add_argument("--fresh", action="store_true", help="make the data again instead of reusing it")
    p.add_argument("--augment", action="store_true", help="Dihedral augmentation (8 symmetries per position)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args: argparse.Namespace) -> int:
    from mmpool.ops.demo import run_demo

    summary = run_demo(
        Path(args.dir),
        scale=args.scale,
        fresh=args.fresh,
        augment=args.augment,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(summary)
    print(
        f"\nthe data stays in {args.dir} and is reused by the next run (--fresh makes it again; "
        f"delete the directory to reclaim its space)"
    )
    return 0


# --------------------------------------------------------------------------- bench


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scale",
        choices=["small", "large"],
        default="small",
        help="small: 4M records, a few minutes; large: 40M records (~11 GB of data), much longer",
    )
    p.add_argument("--out", default="bench_out", help="results, plots and REPORT.md (default ./bench_out)")
    p.add_argument("--data", default=None, help="benchmark data cache (default OUT/data)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these: gather stream resume peers")


def _bench(args: argparse.Namespace) -> int:
    # The suite lives in the repository's tools/ (next to this package in a checkout or editable install); run as
    # a script, it finds its sibling modules (benchdata) on the path Python gives a script.
    import subprocess

    script = Path(__file__).resolve().parent.parent / "tools" / "bench.py"
    if not script.is_file():
        raise ConfigError(
            f"{script} not found: the benchmarks ship with the source repository; "
            "run `mmpool bench` from a checkout (pip install -e .)"
        )
    argv = ["--scale", args.scale, "--out", args.out] + (["--data", args.data] if args.data else [])
    return subprocess.call([sys.executable, str(script), *argv, *(["--only", *args.only] if args.only else [])])


# --------------------------------------------------------------------------- main

COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {
    "convert": ("convert legacy shards into packs, once", _convert_args, _convert),
    "inspect": ("summarise converted directories", _dirs_args, _inspect),
    "verify": ("check every pack and shard checksum", _verify_args, _verify),
    "plan": ("how large a pool fits under a memory cap, and what it maps and costs", _plan_args, _plan),
    "demo": ("make synthetic shards, train a tiny model from the mixed stream, picture the mixing", _demo_args, _demo),
    "bench": ("run the benchmark suite, write bench_out/REPORT.md", _bench_args, _bench),
}


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it between calls of ``main``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(verbosity: int) -> None:
    logger = logging.getLogger("mmpool")
    logger.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)])
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("mmpool: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def build_parser() -> argparse.ArgumentParser:
    # -v is accepted before and after the subcommand; SUPPRESS keeps a subparser from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress (-v) or details (-vv)"
    )
    parser = argparse.ArgumentParser(prog="mmpool", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for an MmpoolError, printed as one line)."""
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    try:
        return int(args.run(args))
    except MmpoolError as exc:
        # One line, no traceback: the message already says what went wrong and how to fix it.
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"mmpool: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
