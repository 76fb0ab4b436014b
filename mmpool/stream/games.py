"""GameKey: which game each position of a batch comes from, for the statistics (``game_field=``).

Positions of one game are strongly correlated; a batch that holds many of one game learns less than its size
suggests (leela-zero #591). Engines mark the game in a field: KataGo's ``globalTargetsNC`` channels 41-46 hold
a hash of the game, so ``game_field="globalTargetsNC[41:47]"``; a converted source may have a ``game_id``
field. The key is the field's bytes (or the bytes of a range of its flattened values) per row.
"""

from __future__ import annotations

import re

import numpy as np

from mmpool.errors import ConfigError

_SPEC = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*(\d+)\s*:\s*(\d+)\s*\])?\s*$")


class GameKey:
    """The game key of ``spec`` (``"field"`` or ``"field[a:b]"``, a range of the field's flattened values),
    checked against the catalog's fields."""

    def __init__(self, spec: str, fields: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        m = _SPEC.match(spec) if isinstance(spec, str) else None
        if m is None:
            raise ConfigError(
                f"game_field={spec!r}: give a field name or a range of one, such as 'game_id' or "
                "'globalTargetsNC[41:47]'"
            )
        name, lo, hi = m.group(1), m.group(2), m.group(3)
        if name not in fields:
            raise ConfigError(f"game_field={spec!r}: no field {name!r}; the data has {', '.join(fields)}")
        size = int(np.prod(fields[name][1], dtype=np.int64))
        start, stop = (0, size) if lo is None else (int(lo), int(hi))
        if not 0 <= start < stop <= size:
            raise ConfigError(
                f"game_field={spec!r}: field {name!r} has {size} values a row; the range must lie in 0..{size}"
            )
        self.spec, self.name, self.start, self.stop = spec, name, start, stop

    def games(self, fields: dict[str, np.ndarray]) -> tuple[int, int]:
        """(distinct games, positions of the game with the most) in a batch of gathered records."""
        values = np.asarray(fields[self.name])
        key = np.ascontiguousarray(values.reshape(len(values), -1)[:, self.start : self.stop])
        rows = key.view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))).ravel()
        _, counts = np.unique(rows, return_counts=True)
        return len(counts), int(counts.max()) if len(counts) else 0
