"""Converting engine data as the engines write it: KataGo's npz shards (file names, nested selfplay directories,
older generations with 64-channel ``globalTargetsNC`` and no q-values) and Leela Chess Zero's V6/V7 games
(``.gz`` files and ``.tar`` archives). Every test checks every converted record field by field."""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mmpool import StreamingMixedShardDataset
from mmpool.cli import main
from mmpool.convert import lc0
from mmpool.convert.converter import convert
from mmpool.errors import ConfigError, ShardError
from mmpool.format.manifest import read_manifest, read_sources
from mmpool.ops.check import inspect_dirs, verify_dirs
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore

# --------------------------------------------------------------------------- KataGo rows (v1.17.2, 19x19)


def katago_arrays(rows: int, first_id: int, channels: int = 80, qvalues: bool = True, metadata: bool = False):
    """Random rows with KataGo's npz keys, dtypes and per-row shapes; ``globalInputNC[:, 0]`` holds a unique id."""
    rng = np.random.default_rng(first_id)
    out = {
        "binaryInputNCHWPacked": rng.integers(0, 256, (rows, 22, 46), dtype=np.uint8),
        "globalInputNC": rng.random((rows, 19), dtype=np.float32),
        "policyTargetsNCMove": rng.integers(0, 1000, (rows, 2, 362), dtype=np.int16),
        "globalTargetsNC": rng.random((rows, channels), dtype=np.float32),
        "scoreDistrN": rng.integers(-100, 100, (rows, 842), dtype=np.int8),
        "valueTargetsNCHW": rng.integers(-1, 2, (rows, 5, 19, 19), dtype=np.int8),
    }
    out["globalInputNC"][:, 0] = np.arange(first_id, first_id + rows)
    if qvalues:
        out["qValueTargetsNCMove"] = rng.integers(-500, 500, (rows, 3, 362), dtype=np.int16)
    if metadata:
        out["metadataInputNC"] = rng.random((rows, 192), dtype=np.float32)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # KataGo's writer
    return arrays


def converted_by_source(dst: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every record of a converted directory, per shard source, read through the store."""
    cat = Catalog([dst])
    store = ShardStore(cat)
    m = read_manifest(dst)
    by_number = {s.number: s.source for s in m.shards}
    out = {}
    for g, number in enumerate(cat.shard_number):
        rows = int(cat.shard_rows[g])
        rec = store.gather_rows(np.full(rows, g), np.arange(rows))
        out[by_number[int(number)]] = {name: rec[name] for name in rec.dtype.names or ()}
    store.close()
    return out


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], strict=True, err_msg=name)


def test_katago_shuffled_names_and_rerun(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, dst = tmp_path / "shuffled", tmp_path / "dst"
    names = ["data0_0.npz", "data1_0.npz", "data1_1.npz", "data10_0.npz"]
    source = {n: write_npz(src / n, katago_arrays(30 + k, 1000 * k)) for k, n in enumerate(names)}
    with caplog.at_level(logging.INFO, logger="mmpool"):
        convert(src, dst, progress=False)
    m = read_manifest(dst)
    assert m.numbering == "order:natural"
    assert [(s.number, s.source) for s in m.shards] == list(enumerate(names))
    assert any("'data0_0.npz' and 'data1_0.npz' both end in 0" in r.getMessage() for r in caplog.records)
    got = converted_by_source(dst)
    for name in names:
        assert_same(got[name], source[name])

    # A rerun: new files come after the converted ones (natural order among themselves); no number moves.
    old_packs = {p.file: (dst / p.file).read_bytes() for p in m.packs}
    for k, n in enumerate(["data2_0.npz", "data0_1.npz"], start=len(names)):
        source[n] = write_npz(src / n, katago_arrays(20, 1000 * k))
    summary = convert(src, dst, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (2, 4)
    m2 = read_manifest(dst)
    assert [(s.number, s.source) for s in m2.shards] == [*enumerate(names), (4, "data0_1.npz"), (5, "data2_0.npz")]
    assert all((dst / f).read_bytes() == data for f, data in old_packs.items())
    got = converted_by_source(dst)
    for name, arrays in source.items():
        assert_same(got[name], arrays)
    assert "    4: data0_1.npz\n    5: data2_0.npz" in inspect_dirs([dst])
    assert "  numbering: order:natural" in inspect_dirs([dst])
    assert verify_dirs([dst], progress=False) == []


def test_katago_order_mtime(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    names = ["data5_0.npz", "data1_0.npz", "data3_0.npz"]  # written in this order
    for k, n in enumerate(names):
        write_npz(src / n, katago_arrays(5, 100 * k))
        os.utime(src / n, ns=(10**18 + k, 10**18 + k))
    convert(src, dst, order="mtime", progress=False)
    m = read_manifest(dst)
    assert (m.numbering, [(s.number, s.source) for s in m.shards]) == ("order:mtime", list(enumerate(names)))


def test_katago_selfplay_nested_hex_names(tmp_path: Path) -> None:
    src, dst = tmp_path / "selfplay", tmp_path / "dst"
    names = [
        "b18c384-s100/tdata/03BE8F44D1BC0BFA.npz",
        "b18c384-s100/tdata/A0C1D2E3F4A5B6C0.npz",
        "b18c384-s200/tdata/1F2E3D4C5B6A7980.npz",
    ]
    source = {n: write_npz(src / n, katago_arrays(12, 100 * k)) for k, n in enumerate(names)}
    with pytest.raises(ConfigError) as err:
        convert(src, dst, progress=False)
    assert str(err.value) == (
        f"no shard files in {str(src)!r} itself, but its subdirectories hold 3 "
        f"(e.g. {names[0]!r}): add --recursive (recursive=True) to convert them"
    )
    assert not dst.exists()
    assert main(["convert", str(src), str(dst), "--recursive", "--quiet"]) == 0
    m = read_manifest(dst)
    assert [(s.number, s.source) for s in m.shards] == list(enumerate(names))
    got = converted_by_source(dst)
    for name in names:
        assert_same(got[name], source[name])


# --------------------------------------------------------------------------- generations: --like, --pad, --fill, --drop


@pytest.fixture
def new_and_old(tmp_path: Path) -> tuple[Path, Path, dict[str, dict[str, np.ndarray]]]:
    """A converted directory of 80-channel rows with q-values, and a source of older 64-channel rows without."""
    new_src, new_dst, old_src = tmp_path / "new", tmp_path / "new.mm", tmp_path / "old"
    for k in range(2):
        write_npz(new_src / f"data{k}_0.npz", katago_arrays(25, 10_000 * (k + 1)))
    convert(new_src, new_dst, progress=False)
    old = {
        f"data{k}_0.npz": write_npz(old_src / f"data{k}_0.npz", katago_arrays(30, 100 * k, 64, False)) for k in range(3)
    }
    return new_dst, old_src, old


def test_like_without_flags_names_every_difference(new_and_old: tuple, tmp_path: Path) -> None:
    new_dst, old_src, _ = new_and_old
    with pytest.raises(ConfigError) as err:
        convert(old_src, tmp_path / "old.mm", like=new_dst, progress=False)
    ref = f"{new_dst / 'mmpool.json'} (--like)"
    assert str(err.value) == (
        f"{str(old_src / 'data0_0.npz')!r}: its fields differ from {ref}, so it cannot share one record schema "
        f"with it:\n  field 'globalTargetsNC' is float32 (64,) here but float32 (80,) in {ref}: --pad "
        f"globalTargetsNC zero-pads it to (80,)\n  field 'qValueTargetsNCMove' (int16 (3, 362) in {ref}) is "
        "missing: --fill qValueTargetsNCMove=VALUE adds it"
    )
    assert not (tmp_path / "old.mm").exists()
    with pytest.raises(ConfigError, match=r"--fill qValueTargetsNCMove=1.5: 'qValueTargetsNCMove' is int16"):
        convert(old_src, tmp_path / "old.mm", like=new_dst, pad=["globalTargetsNC"], fill=["qValueTargetsNCMove=1.5"])
    with pytest.raises(ConfigError, match=r"--pad wdl: .* has no field 'wdl'"):
        convert(old_src, tmp_path / "old.mm", like=new_dst, pad=["wdl"], progress=False)
    assert not (tmp_path / "old.mm").exists()


def test_like_pad_fill_then_mix(new_and_old: tuple, tmp_path: Path) -> None:
    new_dst, old_src, old = new_and_old
    old_dst = tmp_path / "old.mm"
    args = ["convert", str(old_src), str(old_dst), "--like", str(new_dst), "--quiet"]
    assert main([*args, "--pad", "globalTargetsNC", "--fill", "qValueTargetsNCMove=-1"]) == 0
    m = read_manifest(old_dst)
    assert m.schema == read_manifest(new_dst).schema
    assert {s.adapted for s in m.shards} == {("pad globalTargetsNC (64,)->(80,)", "fill qValueTargetsNCMove=-1")}
    text = inspect_dirs([old_dst])
    assert "  adapted to the schema:\n    pad globalTargetsNC (64,)->(80,): shards 0-2\n" in text
    assert "    fill qValueTargetsNCMove=-1: shards 0-2" in text
    got = converted_by_source(old_dst)
    for name, arrays in old.items():
        want = dict(arrays)
        want["globalTargetsNC"] = np.concatenate([arrays["globalTargetsNC"], np.zeros((30, 16), np.float32)], axis=1)
        want["qValueTargetsNCMove"] = np.full((30, 3, 362), -1, np.int16)
        assert_same(got[name], want)

    # Both generations in one dataset: every record exactly once, as converted.
    expected = {**converted_by_source(new_dst), **{f"old/{k}": v for k, v in got.items()}}
    by_id = {}
    for arrays in expected.values():
        for i, ident in enumerate(arrays["globalInputNC"][:, 0]):
            by_id[float(ident)] = {k: v[i] for k, v in arrays.items()}
    ds = StreamingMixedShardDataset([new_dst, old_dst], pool_size=64, batch_size=16, random_seed=0, max_memory_gb=20)
    seen = []
    for batch in ds:
        for i, ident in enumerate(batch["globalInputNC"][:, 0].tolist()):
            seen.append(ident)
            for k, v in by_id[ident].items():
                np.testing.assert_array_equal(batch[k][i].numpy(), v, err_msg=k)
    assert sorted(seen) == sorted(by_id)


def test_drop_extra_field(new_and_old: tuple, tmp_path: Path) -> None:
    new_dst, _, _ = new_and_old
    src = tmp_path / "meta"
    arrays = write_npz(src / "data0_0.npz", katago_arrays(9, 777, metadata=True))
    with pytest.raises(ConfigError, match=r"field 'metadataInputNC' \(float32 \(192,\)\) is not in .*: --drop"):
        convert(src, tmp_path / "meta.mm", like=new_dst, progress=False)
    convert(src, tmp_path / "meta.mm", like=new_dst, drop=["metadataInputNC"], progress=False)
    m = read_manifest(tmp_path / "meta.mm")
    assert m.shards[0].adapted == ("drop metadataInputNC",)
    del arrays["metadataInputNC"]
    assert_same(converted_by_source(tmp_path / "meta.mm")["data0_0.npz"], arrays)


def test_generations_in_one_directory(tmp_path: Path) -> None:
    # The first shard in order (80 channels, q-values) is the reference; the older ones need flags.
    src, dst = tmp_path / "src", tmp_path / "dst"
    new = write_npz(src / "data0_0.npz", katago_arrays(10, 0))
    old = write_npz(src / "data1_0.npz", katago_arrays(10, 100, 64, False))
    with pytest.raises(ConfigError) as err:
        convert(src, dst, progress=False)
    assert str(err.value).startswith(
        f"{str(src / 'data1_0.npz')!r}: its fields differ from the first shard {str(src / 'data0_0.npz')!r}"
    )
    assert "--pad globalTargetsNC" in str(err.value) and "--fill qValueTargetsNCMove=VALUE" in str(err.value)
    assert not dst.exists()
    convert(src, dst, pad=["globalTargetsNC"], fill=["qValueTargetsNCMove=0"], progress=False)
    m = read_manifest(dst)
    assert [s.adapted for s in m.shards] == [(), ("pad globalTargetsNC (64,)->(80,)", "fill qValueTargetsNCMove=0")]
    got = converted_by_source(dst)
    assert_same(got["data0_0.npz"], new)
    old["globalTargetsNC"] = np.pad(old["globalTargetsNC"], ((0, 0), (0, 16)))
    old["qValueTargetsNCMove"] = np.zeros((10, 3, 362), np.int16)
    assert_same(got["data1_0.npz"], old)
    # A later 64-channel file, into the existing directory: the manifest is now the reference.
    later = write_npz(src / "data2_0.npz", katago_arrays(10, 200, 64, False))
    with pytest.raises(ConfigError, match=f"differ from {dst / 'mmpool.json'}"):
        convert(src, dst, progress=False)
    convert(src, dst, pad=["globalTargetsNC"], fill=["qValueTargetsNCMove=0"], progress=False)
    later["globalTargetsNC"] = np.pad(later["globalTargetsNC"], ((0, 0), (0, 16)))
    later["qValueTargetsNCMove"] = np.zeros((10, 3, 362), np.int16)
    assert_same(converted_by_source(dst)["data2_0.npz"], later)


# --------------------------------------------------------------------------- Leela Chess Zero


def lc0_source(root: Path, version: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Three ``.gz`` games and a ``.tar`` of four, of 40..130 records; returns game name -> records."""
    root.mkdir(parents=True, exist_ok=True)
    games = {}
    for k in range(3):
        games[f"game_{k:03d}.gz"] = lc0.write_game(
            root / f"game_{k:03d}.gz", lc0.make_records(40 + 30 * k, version, seed, k)
        )
    members = [(f"training.{k}.gz", lc0.make_records(50 + 20 * k, version, seed, 10 + k)) for k in range(4)]
    lc0.write_archive(root / "training-run1-20240101.tar", members)
    out = {name: lc0.make_records(40 + 30 * k, version, seed, k) for k, name in enumerate(games)}
    out |= {f"training-run1-20240101.tar/{name}": rec for name, rec in members}
    return out


def converted_games(dst: Path) -> dict[str, np.ndarray]:
    """Game name -> its converted records, split along the manifest's per-shard (game, first row) tables."""
    parts = read_sources(dst, read_manifest(dst))
    m = read_manifest(dst)
    out = {}
    for s, (name, rows) in zip(m.shards, converted_by_source(dst).items()):
        assert name == s.source
        firsts = [row for _, row in parts[s.number]] + [s.rows]
        for (game, first), stop in zip(parts[s.number], firsts[1:]):
            out[game] = {k: v[first:stop] for k, v in rows.items()}
    return out


def assert_games(got: dict[str, dict[str, np.ndarray]], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for game, records in want.items():
        assert set(got[game]) == set(records.dtype.names or ())
        for name in records.dtype.names or ():
            np.testing.assert_array_equal(got[game][name], records[name], strict=False, err_msg=f"{game} {name}")
            assert got[game][name].dtype == records.dtype[name].base.newbyteorder("=")


@pytest.mark.parametrize("version", [6, 7])
def test_lc0_games_and_archives(tmp_path: Path, version: int) -> None:
    src, dst = tmp_path / "lc0", tmp_path / "lc0.mm"
    want = lc0_source(src, version)
    assert all(np.isnan(r["orig_q"][0]) for r in want.values())  # NaN where lc0 writes it is accepted
    convert(src, dst, rows_per_shard=150, progress=False)
    m = read_manifest(dst)
    assert m.schema.itemsize == {6: 8360, 7: 8400}[version]
    assert [f.offset for f in m.schema.fields] == [lc0.DTYPES[version].fields[n][1] for n in lc0.DTYPES[version].names]
    # Whole games in natural order, a shard closed once it reaches 150 rows.
    assert [(s.number, s.source, s.rows) for s in m.shards] == [
        (0, "game_000.gz", 40 + 70 + 100),
        (1, "training-run1-20240101.tar/training.0.gz", 50 + 70 + 90),
        (2, "training-run1-20240101.tar/training.3.gz", 110),
    ]
    assert_games(converted_games(dst), want)
    assert "    0: 3 games, game_000.gz .. game_002.gz (rows of each: pack-00000.sources.json)" in inspect_dirs([dst])
    assert verify_dirs([dst], progress=False) == []

    # A rerun converts only new games, into new shards after the existing ones.
    lc0.write_archive(src / "training-run1-20240102.tar", [("training.9.gz", lc0.make_records(33, version, 1, 99))])
    summary = convert(src, dst, rows_per_shard=150, progress=False)
    assert (summary.shards_converted, summary.records) == (1, 33)
    assert [(s.number, s.source) for s in read_manifest(dst).shards][3] == (
        3,
        "training-run1-20240102.tar/training.9.gz",
    )
    want["training-run1-20240102.tar/training.9.gz"] = lc0.make_records(33, version, 1, 99)
    assert_games(converted_games(dst), want)


def test_lc0_workers(tmp_path: Path) -> None:
    src = tmp_path / "lc0"
    want = lc0_source(src, 6)
    convert(src, tmp_path / "one", rows_per_shard=60, pack_size=1, progress=False)
    convert(src, tmp_path / "two", rows_per_shard=60, pack_size=1, workers=2, progress=False)
    assert_games(converted_games(tmp_path / "two"), want)
    a, b = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert [(s.number, s.rows, s.crc32) for s in a.shards] == [(s.number, s.rows, s.crc32) for s in b.shards]


def test_v6_like_v7(tmp_path: Path) -> None:
    v6, v7 = lc0_source(tmp_path / "v6", 6), lc0_source(tmp_path / "v7", 7, seed=1)
    convert(tmp_path / "v7", tmp_path / "v7.mm", progress=False)
    flags = [f for flag in lc0.V6_TO_V7 for f in flag.split(" ")]
    argv = ["convert", str(tmp_path / "v6"), str(tmp_path / "v6.mm"), "--like", str(tmp_path / "v7.mm"), "--quiet"]
    assert main([*argv, *flags]) == 0
    assert read_manifest(tmp_path / "v6.mm").schema == read_manifest(tmp_path / "v7.mm").schema
    got = converted_games(tmp_path / "v6.mm")
    for game, rec in v6.items():
        for name in lc0.V6_DTYPE.names or ():
            if name != "reserved":
                np.testing.assert_array_equal(got[game][name], rec[name], err_msg=name)
        assert np.isnan(got[game]["q_st"]).all() and np.isnan(got[game]["d_st"]).all()
        for name in ["opp_played_idx", "next_played_idx", *(f"reserved{k}" for k in range(1, 9))]:
            assert (got[game][name] == 0).all(), name
        assert "reserved" not in got[game]
    assert_games(converted_games(tmp_path / "v7.mm"), v7)
    Catalog([tmp_path / "v7.mm", tmp_path / "v6.mm"])  # one schema: they mix


def fails(src: Path, dst: Path, **kwargs: object) -> str:
    with pytest.raises(ShardError) as err:
        convert(src, dst, progress=False, **kwargs)  # type: ignore[arg-type]
    assert not dst.exists() or not (dst / "mmpool.json").exists()
    return str(err.value)


def test_lc0_cut_files(tmp_path: Path) -> None:
    src = tmp_path / "cut"
    src.mkdir()
    records = lc0.make_records(20, 6)
    (src / "game_0.gz").write_bytes(gzip.compress(records.tobytes()[:-100]))
    assert fails(src, tmp_path / "dst") == (
        f"game file {str(src / 'game_0.gz')!r}: {20 * 8356 - 100} bytes uncompressed, not a whole number of V6 "
        "records of 8356 bytes (the file is cut after record 18, or is not lc0 training data)"
    )
    (src / "game_0.gz").unlink()
    member = gzip.compress(lc0.make_records(5, 7).tobytes()[:-1])
    lc0.write_archive(src / "a.tar", [("ok.gz", lc0.make_records(3, 7))])
    with tarfile.open(src / "a.tar", "a:") as tar:
        info = tarfile.TarInfo("cut.gz")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    msg = fails(src, tmp_path / "dst")
    assert msg.startswith(f"game 'cut.gz' in archive {str(src / 'a.tar')!r}: {5 * 8396 - 1} bytes uncompressed")
    # A gzip stream cut short (a truncated download) is named too.
    (src / "a.tar").unlink()
    data = lc0.game_bytes(lc0.make_records(30, 6))
    (src / "g.gz").write_bytes(data[: len(data) // 2] + data[-8:])  # keeps a plausible size trailer
    msg = fails(src, tmp_path / "dst")
    assert msg.startswith(f"cannot read game file {str(src / 'g.gz')!r}: ")


def test_lc0_wrong_versions(tmp_path: Path) -> None:
    src = tmp_path / "v"
    src.mkdir()
    records = lc0.make_records(10, 6)
    records["version"][0] = 5
    lc0.write_game(src / "game_1.gz", records)
    assert fails(src, tmp_path / "dst") == (
        f"game file {str(src / 'game_1.gz')!r}: record 0 has version 5; this reader knows lc0 training data "
        "versions [6, 7] (V6TrainingData, V7TrainingData)"
    )
    records["version"][0] = 6
    records["version"][7] = 7
    lc0.write_game(src / "game_1.gz", records)
    assert fails(src, tmp_path / "dst") == (
        f"game file {str(src / 'game_1.gz')!r}: record 7 has version 7, record 0 has 6; a game holds records of "
        "one version"
    )


def test_lc0_nan_outside_orig(tmp_path: Path) -> None:
    src = tmp_path / "nan"
    src.mkdir()
    records = lc0.make_records(10, 6)
    records["root_q"][4] = np.nan
    lc0.write_archive(src / "a.tar", [("g.gz", records)])
    assert fails(src, tmp_path / "dst") == (
        f"game 'g.gz' in archive {str(src / 'a.tar')!r}: record 4 field 'root_q' holds a non-finite value (nan); "
        "lc0 writes NaN only in orig_d, orig_m, orig_q: fix or drop that game (or convert with --allow-nonfinite)"
    )
    convert(src, tmp_path / "dst", allow_nonfinite=True, progress=False)
    assert np.isnan(converted_games(tmp_path / "dst")["a.tar/g.gz"]["root_q"][4])


def test_lc0_and_npz_in_one_directory(tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    lc0_source(src, 6)
    write_npz(src / "data0_0.npz", katago_arrays(3, 0))
    with pytest.raises(ConfigError, match=r"holds lc0 games \('game_000.gz'\) and other shards \('data0_0.npz'\)"):
        convert(src, tmp_path / "dst", progress=False)
