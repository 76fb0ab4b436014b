"""Giving shards of an older (or newer) generation of a format the record schema of a reference.

The reference is a directory's existing schema, another converted directory's (``--like``), or the first shard's.
Differences are resolved only by explicit flags, each naming one field:

* ``--pad FIELD``: the source's field is shorter on its last axis (KataGo's 64-channel ``globalTargetsNC`` next to
  80): zeros are appended, as KataGo's trainer does.
* ``--fill FIELD=VALUE``: the reference has a field the source lacks (``qValueTargetsNCMove``): every element is
  VALUE.
* ``--drop FIELD``: the source has a field the reference lacks: it is left out.

A dtype difference, or a field longer than the reference's, has no flag: the error says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmpool.errors import ConfigError
from mmpool.format.manifest import Schema

Fields = Mapping[str, tuple[np.dtype, tuple[int, ...]]]


def _spec(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    return f"{np.dtype(dtype).name} {shape}"


@dataclass(frozen=True)
class Adapt:
    """The ``--pad``, ``--fill`` and ``--drop`` flags of one conversion."""

    pad: frozenset[str] = frozenset()
    fill: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, pad: Sequence[str] = (), fill: Sequence[str] = (), drop: Sequence[str] = ()) -> Adapt:
        """Flags from their command-line form (``fill`` items are ``FIELD=VALUE``)."""
        values: dict[str, str] = {}
        for item in fill:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise ConfigError(f"--fill {item!r}: give FIELD=VALUE, e.g. --fill qValueTargetsNCMove=0")
            values[name] = value
        both = (set(pad) | set(values)) & set(drop)
        if both:
            raise ConfigError(f"field {sorted(both)[0]!r} is given to --drop and to --pad/--fill: pick one")
        return cls(frozenset(pad), values, frozenset(drop))

    def __bool__(self) -> bool:
        return bool(self.pad or self.fill or self.drop)

    def reference(self, fields: Fields) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """A first shard's fields as the reference: without the fields to drop."""
        return {name: spec for name, spec in fields.items() if name not in self.drop}

    def check(self, ref: Schema, where: str) -> dict[str, np.ndarray]:
        """Check the flags against the reference schema; returns the fill values as 0-d arrays of their dtype."""
        specs = ref.field_specs()
        names = ", ".join(specs)
        for flag, fields in (("--pad", self.pad), ("--fill", self.fill)):
            for name in fields:
                if name not in specs:
                    raise ConfigError(f"{flag} {name}: {where} has no field {name!r} (its fields: {names})")
        for name in self.drop:
            if name in specs:
                raise ConfigError(
                    f"--drop {name}: {name!r} is a field of {where}; --drop only leaves out fields it does not have"
                )
        return {name: _fill_value(name, text, specs[name][0]) for name, text in self.fill.items()}

    def steps(self, ref: Schema, fields: Fields, where: str, ref_where: str) -> tuple[str, ...]:
        """What to do to a shard with ``fields`` to give it ``ref``'s schema (the manifest's ``adapted`` list).

        Raises ConfigError naming every difference no flag resolves, both sides' dtype and shape, and the flag
        that would resolve it.
        """
        steps: list[str] = []
        problems: list[str] = []
        specs = ref.field_specs()
        for name, (dtype, shape) in specs.items():
            if name not in fields:
                if name in self.fill:
                    steps.append(f"fill {name}={self.fill[name]}")
                else:
                    problems.append(
                        f"field {name!r} ({_spec(dtype, shape)} in {ref_where}) is missing: --fill {name}=VALUE adds it"
                    )
                continue
            their_dtype, their_shape = fields[name]
            if np.dtype(their_dtype).newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
                problems.append(
                    f"field {name!r} is {_spec(their_dtype, their_shape)} here but {_spec(dtype, shape)} in "
                    f"{ref_where}: a dtype difference has no flag; convert the field's dtype first"
                )
            elif their_shape != shape:
                shorter = (
                    len(shape) == len(their_shape) > 0
                    and their_shape[:-1] == shape[:-1]
                    and their_shape[-1] < shape[-1]
                )
                if shorter and name in self.pad:
                    steps.append(f"pad {name} {their_shape}->{shape}")
                elif shorter:
                    problems.append(
                        f"field {name!r} is {_spec(their_dtype, their_shape)} here but {_spec(dtype, shape)} in "
                        f"{ref_where}: --pad {name} zero-pads it to {shape}"
                    )
                else:
                    problems.append(
                        f"field {name!r} is {_spec(their_dtype, their_shape)} here but {_spec(dtype, shape)} in "
                        f"{ref_where}: --pad only lengthens the last axis; take the larger schema as the "
                        f"reference (--like a directory holding it, or convert those shards first)"
                    )
        for name, (dtype, shape) in fields.items():
            if name in specs:
                continue
            if name in self.drop:
                steps.append(f"drop {name}")
            else:
                problems.append(
                    f"field {name!r} ({_spec(dtype, shape)}) is not in {ref_where}: --drop {name} leaves it out"
                )
        if problems:
            raise ConfigError(
                f"{where}: its fields differ from {ref_where}, so it cannot share one record schema with it:\n  "
                + "\n  ".join(problems)
            )
        return tuple(steps)


def _fill_value(name: str, text: str, dtype: np.dtype) -> np.ndarray:
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"--fill {name}={text}: the value must be a number (or nan, inf)") from None
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        if not number.is_integer() or (info is not None and not info.min <= number <= info.max):
            raise ConfigError(f"--fill {name}={text}: {name!r} is {dtype.name}; give an integer it can hold")
        return np.array(int(number), dtype=dtype)
    if dtype.kind not in "fc":
        raise ConfigError(f"--fill {name}: {name!r} is {dtype.name}; only numeric fields can be filled")
    if math.isfinite(number) and dtype.kind == "f" and not math.isfinite(float(np.array(number, dtype=dtype))):
        raise ConfigError(f"--fill {name}={text}: too large for {dtype.name}")
    return np.array(number, dtype=dtype)


def apply(
    arrays: dict[str, np.ndarray], ref: Schema, fill: Mapping[str, np.ndarray], rows: int
) -> dict[str, np.ndarray]:
    """A shard's arrays in the reference's fields: padded with zeros, filled, extra fields left out.

    Only call after ``Adapt.steps`` accepted the shard."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, shape) in ref.field_specs().items():
        arr = arrays.get(name)
        if arr is None:
            out[name] = np.broadcast_to(fill[name], (rows, *shape))
        elif arr.shape[1:] != shape:
            padded = np.zeros((rows, *shape), dtype=dtype)
            padded[..., : arr.shape[-1]] = arr
            out[name] = padded
        else:
            out[name] = arr
    return out
