"""The ``mmpool`` command line: ``convert``, ``inspect``, ``verify`` and ``demo``.

Each subcommand is one entry of ``COMMANDS``: ``name -> (help, add_arguments, run)``; ``run`` returns the exit code.
Add a subcommand by adding an entry. MmpoolError becomes a one-line ``mmpool: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmpool.errors import ConfigError, MmpoolError

log = logging.getLogger("mmpool")

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

DEMO_MARKER = ".mmpool-demo"  # marks a directory the demo made, so it only ever deletes its own


# --------------------------------------------------------------------------- convert / inspect / verify


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="directory of legacy shards (.npz, .npy, .pt, .h5)")
    p.add_argument("dst", help="directory for the packs and manifest (created; converted shards are skipped)")
    p.add_argument("--format", choices=["npy", "hdf5"], default="npy", help="pack file format (default npy)")
    p.add_argument("--pack-size", default="1G", help="max record bytes per pack, e.g. 512M, 2G (default 1G)")
    p.add_argument("--workers", type=int, default=1, help="packs converted in parallel (default 1)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf in float fields")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _convert(args: argparse.Namespace) -> int:
    from mmpool.convert import convert

    summary = convert(
        args.src, args.dst, fmt=args.format, pack_size=args.pack_size, workers=args.workers,
        allow_nonfinite=args.allow_nonfinite, progress=not args.quiet,
    )
    print(summary)
    return 0


def _dirs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="converted directories")


def _inspect(args: argparse.Namespace) -> int:
    from mmpool.check import inspect_dirs

    print(inspect_dirs(args.dirs))
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    _dirs_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _verify(args: argparse.Namespace) -> int:
    from mmpool.check import verify_dirs
    from mmpool.format import read_manifest

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


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="mmpool_demo", help="data directory (default ./mmpool_demo)")
    p.add_argument("--keep", action="store_true", help="keep the data directory afterwards")


def demo_root(path: Path) -> Path:
    """Create an empty demo directory; refuses a non-empty directory the demo did not make."""
    if path.exists():
        if not (path / DEMO_MARKER).exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"{path} exists and was not made by the demo; give an empty or new --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / DEMO_MARKER).touch()
    return path


def demo_data(root: Path) -> list[Path]:
    """Synthetic legacy shards (2 directories, 12 and 4 shards of 5000 rows) converted under ``root/converted``."""
    from mmpool.convert import convert
    from mmpool.synthetic import make_synthetic

    sources = make_synthetic(root / "legacy", [12, 4], 5000, fmt="npz", seed=0, dir_names=["main", "extra"])
    out = []
    for src in sources:
        dst = root / "converted" / src.name
        print(f"{src} -> {dst}: {convert(src, dst, pack_size='4M', progress=False)}")
        out.append(dst)
    return out


def _demo(args: argparse.Namespace) -> int:
    from mmpool.check import inspect_dirs

    root = demo_root(Path(args.dir))
    try:
        dirs = demo_data(root)
        print()
        print(inspect_dirs(dirs))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.keep:
        print(f"\ndemo data kept in {root}")
    return 0


# --------------------------------------------------------------------------- main

COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {
    "convert": ("convert legacy shards into packs, once", _convert_args, _convert),
    "inspect": ("summarise converted directories", _dirs_args, _inspect),
    "verify": ("check every pack and shard checksum", _verify_args, _verify),
    "demo": ("generate synthetic shards, convert and inspect them", _demo_args, _demo),
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
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log progress (-v) or details (-vv)")
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
