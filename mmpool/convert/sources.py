"""Which files of a source directory are inputs, and which shard number each one gets.

Numbering (recorded in the manifest as ``numbering``; a number once given never changes):

* ``last-integer``: the last integer of the file name without its suffix (``shard_00042.npz`` is 42), used while it
  numbers every file of the directory, converted and new, uniquely.
* otherwise (``order:ORDER``) the new files are put in an order (``natural`` by default: names compared with their digit runs as
  numbers, so ``data2_0`` < ``data10_0``; ``name``: plain string order; ``mtime``: modification time, then name;
  ``number``: the last integer, then natural) and numbered after the highest number in use. KataGo's
  ``data{bucket}_{idx}.npz`` and its 16-hex-digit selfplay names fall here.

Files are named by their path relative to the source directory (``selfplay/m1/tdata/03BE8F44D1BC0BFA.npz``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from mmpool.errors import ConfigError

log = logging.getLogger("mmpool")

ORDERS: tuple[str, ...] = ("natural", "name", "mtime", "number")
NAME_NUMBERS = "last-integer"


def last_integer(name: str) -> int | None:
    """The last integer in a file name without its suffix, or None (``gen3_part_17.h5`` -> 17)."""
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) if numbers else None


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing digit runs as numbers: ``a/data2_0.npz`` before ``a/data10_0.npz``."""
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", name) if part)


def list_files(src: Path, suffixes: Collection[str], recursive: bool = False, exclude: Path | None = None) -> list[str]:
    """Input files of ``src`` (relative paths, POSIX form, in natural order) with one of ``suffixes``.

    Hidden files and directories (editor swap files, temporaries of atomic writes) and ``exclude`` (a converted
    directory inside ``src``) are skipped. Without ``recursive``, a directory whose files sit only in
    subdirectories is a ConfigError that says how to include them.
    """
    src = Path(src)
    if not src.exists():
        raise ConfigError(f"shard directory {str(src)!r} does not exist")
    if not src.is_dir():
        raise ConfigError(f"shard directory {str(src)!r} is not a directory")
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None

    def walk(d: Path, deep: bool) -> list[str]:
        out = []
        for path in d.iterdir():
            if path.name.startswith(".") or (skip is not None and path.resolve() == skip):
                continue
            if path.is_dir():
                if deep:
                    out += walk(path, deep)
            elif path.is_file() and path.suffix.lower() in suffixes:
                out.append(path.relative_to(src).as_posix())
        return out

    found = walk(src, recursive)
    if not found:
        deeper = [] if recursive else walk(src, True)
        if deeper:
            example = sorted(deeper, key=natural_key)[0]
            raise ConfigError(
                f"no shard files in {str(src)!r} itself, but its subdirectories hold {len(deeper)} "
                f"(e.g. {example!r}): add --recursive (recursive=True) to convert them"
            )
        raise ConfigError(f"no shard files in {str(src)!r}; accepted suffixes are {', '.join(sorted(suffixes))}")
    return sorted(found, key=natural_key)


def order_names(names: Sequence[str], order: str, root: Path) -> list[str]:
    """``names`` (relative to ``root``) in the order ``order`` (one of ORDERS)."""
    if order not in ORDERS:
        raise ConfigError(f"order {order!r}: use one of {', '.join(ORDERS)}")
    if order == "name":
        return sorted(names)
    if order == "mtime":
        return sorted(names, key=lambda n: ((root / n).stat().st_mtime_ns, natural_key(n)))
    if order == "number":
        return sorted(names, key=lambda n: (last_integer(n) is None, last_integer(n) or 0, natural_key(n)))
    return sorted(names, key=natural_key)


def _name_numbers(new: Sequence[str], used: Collection[int]) -> tuple[dict[str, int], str | None]:
    """Numbers from the names, or None and why they do not number the files uniquely."""
    out: dict[str, int] = {}
    by_number: dict[int, str] = {}
    for name in new:
        number = last_integer(name)
        if number is None:
            return {}, f"{name!r} holds no number"
        if number in by_number:
            return {}, f"{by_number[number]!r} and {name!r} both end in {number}"
        if number in used:
            return {}, f"{name!r} ends in {number}, a number already converted"
        by_number[number] = name
        out[name] = number
    return out, None


def number_files(
    names: Sequence[str], known: Mapping[str, int], rule: str | None, order: str, root: Path
) -> tuple[dict[str, int], str]:
    """Shard numbers of the files ``names`` not in ``known`` (name -> number already converted), and the
    numbering rule now in force. ``rule`` is the manifest's (None for a new directory)."""
    new = [n for n in names if n not in known]
    if rule in (None, NAME_NUMBERS):
        numbers, why = _name_numbers(new, set(known.values()))
        if why is None:
            return numbers, NAME_NUMBERS
        if known:
            log.warning(
                "%s: the last integers of the file names no longer number the files uniquely (%s): the %d new "
                "files are numbered from %d in %s order; converted shards keep their numbers",
                root,
                why,
                len(new),
                max(known.values()) + 1,
                order,
            )
        else:
            log.info("%s: file names do not number the files uniquely (%s): numbering in %s order", root, why, order)
    if not new:
        return {}, rule or NAME_NUMBERS
    start = max(known.values(), default=-1) + 1
    numbers = {name: start + k for k, name in enumerate(order_names(new, order, root))}
    if rule not in (None, NAME_NUMBERS):
        log.info("%s: %d new files numbered from %d in %s order", root, len(new), start, order)
    return numbers, f"order:{order}"
