"""Shard range strings: ``all``, ``7``, ``0-99`` (inclusive), ``100-`` (100 on), ``-49``, and comma lists of those."""

from __future__ import annotations

import re

import numpy as np

from mmpool.errors import ConfigError

_PART = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_range(text: str, where: str = "") -> list[tuple[int, int | None]]:
    """Parse a range string into inclusive ``(low, high)`` intervals; ``high`` None means no upper end.

    ``where`` (usually the directory) is named in the error for a malformed string.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where}: shard range must be a string such as 'all' or '0-99', got {text!r}")
    if text.strip().lower() == "all":
        return [(0, None)]
    out: list[tuple[int, int | None]] = []
    for part in text.split(","):
        m = _PART.match(part)
        lo_s, dash, hi_s = m.groups() if m else ("", "", "")
        if not m or not (lo_s or hi_s) or (not dash and (not lo_s or hi_s)):
            raise ConfigError(
                f"{where}: malformed shard range {text!r} (part {part!r}); "
                "use 'all', '7', '0-99', '100-', '-49' or a comma list such as '0-9,20-29'"
            )
        lo = int(lo_s) if lo_s else 0
        hi = (int(hi_s) if hi_s else None) if dash else lo
        if hi is not None and hi < lo:
            raise ConfigError(f"{where}: shard range {text!r} has part {part.strip()!r} whose end is before its start")
        out.append((lo, hi))
    return out


def select(numbers: np.ndarray, text: str, where: str = "") -> np.ndarray:
    """Boolean mask of the shard ``numbers`` the range string selects."""
    numbers = np.asarray(numbers)
    mask = np.zeros(len(numbers), dtype=bool)
    for lo, hi in parse_range(text, where):
        mask |= (numbers >= lo) & ((numbers <= hi) if hi is not None else True)
    return mask


def to_range(numbers: list[int] | np.ndarray) -> str:
    """The shortest comma list of inclusive runs that selects exactly ``numbers`` (e.g. ``0-9,20-29``)."""
    nums = sorted(int(n) for n in numbers)
    runs: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        runs.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(runs)
