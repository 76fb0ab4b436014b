"""Tests for mmpool.convert.adapt on its own: the --pad/--fill/--drop flags (parse, check), Adapt.steps (what gives
a shard the reference schema, or an error naming every difference no flag resolves), and apply on the arrays.

Conversions of whole KataGo generations with these flags (--like, the manifest's ``adapted`` list) are tested in
test_engines.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mmpool.convert.adapt import Adapt, apply
from mmpool.errors import ConfigError
from mmpool.format.manifest import Schema
from mmpool.testing.synthetic import katago_rows

F4, I2 = np.dtype(np.float32), np.dtype(np.int16)
REF = {
    "planes": (np.dtype(np.uint8), (2, 9)),
    "q": (I2, (2, 5)),
    "g": (F4, (4, 80)),
    "wdl": (F4, (3,)),
}


def ref_schema(fields=None) -> Schema:
    return Schema.from_fields(dict(REF if fields is None else fields))


# --------------------------------------------------------------------------- flags


def test_parse_the_command_line_flags() -> None:
    a = Adapt.parse(pad=["g", "h"], fill=["q=-1", "r=nan", "s=a=b"], drop=["meta"])
    assert a.pad == frozenset({"g", "h"}) and a.drop == frozenset({"meta"})
    assert dict(a.fill) == {"q": "-1", "r": "nan", "s": "a=b"}  # split at the first '='
    assert bool(a)
    assert not Adapt() and not Adapt.parse()
    assert bool(Adapt.parse(pad=["g"])) and bool(Adapt.parse(fill=["q=0"])) and bool(Adapt.parse(drop=["m"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fill": ["q"]}, r"--fill 'q': give FIELD=VALUE, e\.g\. --fill qValueTargetsNCMove=0"),
        ({"fill": ["=1"]}, r"--fill '=1': give FIELD=VALUE"),
        ({"fill": ["q="]}, r"--fill 'q=': give FIELD=VALUE"),
        ({"fill": ["q=1", ""]}, r"--fill '': give FIELD=VALUE"),
        ({"pad": ["g"], "drop": ["g"]}, r"field 'g' is given to --drop and to --pad/--fill: pick one"),
        ({"fill": ["q=0"], "drop": ["q"]}, r"field 'q' is given to --drop and to --pad/--fill: pick one"),
        ({"pad": ["z", "b"], "fill": ["a=1"], "drop": ["z", "a", "b"]}, r"field 'a' is given to --drop"),
    ],
)
def test_bad_flags_are_config_errors_naming_the_flag_and_field(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Adapt.parse(**kwargs)


def test_the_reference_of_a_first_shard_leaves_out_the_dropped_fields() -> None:
    fields = {"a": (F4, (3,)), "meta": (F4, (192,)), "b": (I2, ()), "extra": (I2, (1,))}
    got = Adapt.parse(drop=["meta", "extra", "absent"]).reference(fields)
    assert list(got.items()) == [("a", (F4, (3,))), ("b", (I2, ()))]
    assert Adapt().reference(fields) == fields


@pytest.mark.parametrize(
    ("dtype", "text", "want"),
    [
        (np.int16, "-1", -1),
        (np.int8, "-128", -128),
        (np.int8, "1e2", 100),  # any number that is an integer
        (np.uint8, "255", 255),
        (np.int64, "-4503599627370496", -(2**52)),
        (np.bool_, "1", True),
        (np.bool_, "0", False),
        (np.float32, "0.1", np.float32(0.1)),
        (np.float16, "-65504", -65504.0),
        (np.float64, "-inf", -math.inf),
        (np.float32, "1e-50", 0.0),  # below the smallest float32: rounds to zero, allowed
        (np.complex64, "2.5", 2.5 + 0j),
    ],
)
def test_fill_values_are_0d_arrays_of_the_fields_dtype(dtype, text, want) -> None:
    ref = ref_schema({"x": (np.dtype(dtype), (3,)), "wdl": (F4, (3,))})
    got = Adapt.parse(fill=[f"x={text}"]).check(ref, "REF")
    assert list(got) == ["x"]
    value = got["x"]
    assert value.shape == () and value.dtype == np.dtype(dtype)
    assert value.item() == want and type(value.item()) is type(np.array(want, dtype=dtype).item())


def test_fill_nan() -> None:
    got = Adapt.parse(fill=["q=-7", "wdl=nan"]).check(ref_schema(), "REF")
    assert got["q"].dtype == I2 and got["q"].item() == -7
    assert got["wdl"].dtype == F4 and np.isnan(got["wdl"])


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"pad": ["h"]}, r"^--pad h: the reference dir has no field 'h' \(its fields: planes, q, g, wdl\)$"),
        ({"fill": ["qq=0"]}, r"^--fill qq: the reference dir has no field 'qq' \(its fields: planes, q, g, wdl\)$"),
        ({"drop": ["q"]}, r"^--drop q: 'q' is a field of the reference dir; --drop only leaves out fields it does"),
        ({"fill": ["q=zero"]}, r"^--fill q=zero: the value must be a number \(or nan, inf\)$"),
        ({"fill": ["q=1.5"]}, r"^--fill q=1\.5: 'q' is int16; give an integer it can hold$"),
        ({"fill": ["q=32768"]}, r"^--fill q=32768: 'q' is int16; give an integer it can hold$"),
        ({"fill": ["q=-32769"]}, r"^--fill q=-32769: 'q' is int16"),
        ({"fill": ["q=nan"]}, r"^--fill q=nan: 'q' is int16"),
        ({"fill": ["planes=-1"]}, r"^--fill planes=-1: 'planes' is uint8; give an integer it can hold$"),
        ({"fill": ["planes=256"]}, r"^--fill planes=256: 'planes' is uint8"),
        ({"fill": ["g=1e39"]}, r"^--fill g=1e39: too large for float32$"),
    ],
)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # adapt's own range check
def test_flags_that_do_not_fit_the_reference_are_config_errors(flags, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Adapt.parse(**flags).check(ref_schema(), "the reference dir")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # adapt's own range check
def test_only_numeric_fields_can_be_filled() -> None:
    ref = ref_schema({"name": (np.dtype("S4"), ()), "wdl": (F4, (3,))})
    with pytest.raises(ConfigError, match=r"^--fill name: 'name' is bytes32; only numeric fields can be filled$"):
        Adapt.parse(fill=["name=1"]).check(ref, "REF")
    with pytest.raises(ConfigError, match=r"^--fill f16=70000: too large for float16$"):
        Adapt.parse(fill=["f16=70000"]).check(ref_schema({"f16": (np.dtype(np.float16), ())}), "REF")


# --------------------------------------------------------------------------- steps


def test_steps_lists_the_steps_in_the_references_order_then_the_drops() -> None:
    src = {
        "meta": (F4, (7,)),
        "wdl": (F4, (3,)),
        "g": (F4, (4, 64)),
        "planes": (np.dtype(np.uint8), (2, 9)),
        "extra": (np.dtype(np.uint8), (2,)),
    }
    flags = Adapt.parse(pad=["g"], fill=["q=-1"], drop=["extra", "meta"])
    steps = flags.steps(ref_schema(), src, "'src/b.npz'", "REF")
    assert steps == ("fill q=-1", "pad g (4, 64)->(4, 80)", "drop meta", "drop extra")


def test_steps_of_a_shard_with_the_references_fields_has_no_steps() -> None:
    same = dict(REF)
    assert Adapt().steps(ref_schema(), same, "here", "REF") == ()
    # Flags that apply to nothing do nothing; another order of the fields, or another byte order, is the same.
    flags = Adapt.parse(pad=["g"], fill=["q=0"], drop=["nothing"])
    shuffled = {k: same[k] for k in ("wdl", "g", "q", "planes")}
    shuffled["wdl"] = (np.dtype(">f4"), (3,))
    assert flags.steps(ref_schema(), shuffled, "here", "REF") == ()


def test_steps_names_every_difference_no_flag_resolves() -> None:
    src = {
        "planes": (np.dtype(np.int8), (2, 9)),  # dtype
        "g": (F4, (4, 64)),  # shorter, no --pad
        "wdl": (F4, (3, 1)),  # other dimensions
        "meta": (F4, (7,)),  # extra, no --drop
        # q is missing, no --fill
    }
    with pytest.raises(ConfigError) as err:
        Adapt().steps(ref_schema(), src, "'old/data1.npz'", "the first shard")
    assert str(err.value) == (
        "'old/data1.npz': its fields differ from the first shard, so it cannot share one record schema with it:\n"
        "  field 'planes' is int8 (2, 9) here but uint8 (2, 9) in the first shard: a dtype difference has no flag; "
        "convert the field's dtype first\n"
        "  field 'q' (int16 (2, 5) in the first shard) is missing: --fill q=VALUE adds it\n"
        "  field 'g' is float32 (4, 64) here but float32 (4, 80) in the first shard: --pad g zero-pads it to (4, 80)\n"
        "  field 'wdl' is float32 (3, 1) here but float32 (3,) in the first shard: --pad only lengthens the last "
        "axis; take the larger schema as the reference (--like a directory holding it, or convert those shards "
        "first)\n"
        "  field 'meta' (float32 (7,)) is not in the first shard: --drop meta leaves it out"
    )


@pytest.mark.parametrize("theirs", [(4, 96), (5, 64), (320,)], ids=["longer", "another-first-axis", "fewer-axes"])
def test_pad_only_lengthens_the_last_axis(theirs) -> None:
    src = {**REF, "g": (F4, theirs)}
    match = f"field 'g' is float32 {theirs} here but float32 (4, 80) in REF: --pad only lengthens the last axis"
    with pytest.raises(ConfigError, match=re.escape(match)):
        Adapt.parse(pad=["g"]).steps(ref_schema(), src, "here", "REF")


def test_pad_of_a_scalar_field_is_refused() -> None:
    ref = ref_schema({"v": (F4, (1,)), "wdl": (F4, (3,))})
    with pytest.raises(ConfigError, match=r"field 'v' is float32 \(\) here but float32 \(1,\) in REF: --pad only"):
        Adapt.parse(pad=["v"]).steps(ref, {"v": (F4, ()), "wdl": (F4, (3,))}, "here", "REF")


# --------------------------------------------------------------------------- apply


def test_apply_pads_with_zeros_fills_and_leaves_out_the_extra_fields() -> None:
    rows = 6
    rng = np.random.default_rng(0)
    src = {
        "meta": rng.random((rows, 7), dtype=np.float32),
        "wdl": rng.random((rows, 3), dtype=np.float32),
        "g": rng.random((rows, 4, 64), dtype=np.float32) + 1,  # no zeros of its own
        "planes": rng.integers(0, 256, size=(rows, 2, 9), dtype=np.uint8),
    }
    flags = Adapt.parse(pad=["g"], fill=["q=-3"], drop=["meta"])
    ref = ref_schema()
    fill = flags.check(ref, "REF")
    flags.steps(ref, {k: (v.dtype, v.shape[1:]) for k, v in src.items()}, "here", "REF")
    out = apply(src, ref, fill, rows)
    assert list(out) == ["planes", "q", "g", "wdl"]  # the reference's fields, in its order
    assert out["planes"] is src["planes"] and out["wdl"] is src["wdl"]  # unchanged fields are not copied
    assert out["q"].dtype == I2 and out["q"].shape == (rows, 2, 5) and (out["q"] == -3).all()
    assert out["g"].dtype == F4 and out["g"].shape == (rows, 4, 80)
    np.testing.assert_array_equal(out["g"], np.pad(src["g"], ((0, 0), (0, 0), (0, 16))))
    # The result fits a record of the reference schema, field for field.
    records = np.zeros(rows, dtype=ref.dtype)
    for k, v in out.items():
        records[k] = v
    np.testing.assert_array_equal(records["g"][:, :, :64], src["g"])
    assert (records["g"][:, :, 64:] == 0).all() and (records["q"] == -3).all()


def test_apply_a_katago_generation_of_64_channels_without_q_values() -> None:
    new = katago_rows(5, seed=1)
    old = katago_rows(7, seed=2, global_targets=64, with_q=False)
    ref = Schema.from_fields({k: (v.dtype, v.shape[1:]) for k, v in new.items()})
    flags = Adapt.parse(pad=["globalTargetsNC"], fill=["qValueTargetsNCMove=0"])
    fill = flags.check(ref, "new")
    steps = flags.steps(ref, {k: (v.dtype, v.shape[1:]) for k, v in old.items()}, "old", "new")
    assert steps == ("pad globalTargetsNC (64,)->(80,)", "fill qValueTargetsNCMove=0")
    out = apply(old, ref, fill, 7)
    assert list(out) == list(new)
    for k in new:
        if k == "globalTargetsNC":
            want = np.concatenate([old[k], np.zeros((7, 16), np.float32)], axis=1)
        elif k == "qValueTargetsNCMove":
            want = np.zeros((7, 3, 362), np.int16)
        else:
            want = old[k]
        np.testing.assert_array_equal(out[k], want, strict=True, err_msg=k)


def test_apply_to_an_empty_shard() -> None:
    flags = Adapt.parse(pad=["g"], fill=["q=1"])
    ref = ref_schema()
    src = {
        "planes": np.zeros((0, 2, 9), np.uint8),
        "g": np.zeros((0, 4, 70), np.float32),
        "wdl": np.zeros((0, 3), np.float32),
    }
    out = apply(src, ref, flags.check(ref, "REF"), 0)
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        "planes": (np.dtype(np.uint8), (0, 2, 9)),
        "q": (I2, (0, 2, 5)),
        "g": (F4, (0, 4, 80)),
        "wdl": (F4, (0, 3)),
    }
