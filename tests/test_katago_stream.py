"""KataGo rows end to end: npz shards as KataGo's shuffler writes them (``data{bucket}_{idx}.npz``, compressed),
converted, streamed with the KataGo Dihedral and a ``transform`` that unpacks the planes to float32 as KataGo's
trainer wants them. Every (position, symmetry) exactly once, each field equal to an independent transform of its
source row; the transform runs in training and validation alike; an augmentation of factor 1 is applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_augment_packed import KATAGO, PACKED, element, unpacked, vector_element
from torch.utils.data import DataLoader

from mmpool import Dihedral
from mmpool.convert.converter import convert
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.testing.synthetic import katago_rows

ROWS, FILES = 96, 4  # rows per npz file


@pytest.fixture(scope="module")
def katago(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A converted directory of KataGo shards and all source rows; globalInputNC[:, 0] holds a row id."""
    root = tmp_path_factory.mktemp("katago")
    src = root / "shuffled"
    src.mkdir()
    parts = []
    for b in range(FILES):
        rows = katago_rows(ROWS, seed=b)
        rows["globalInputNC"][:, 0] = np.arange(b * ROWS, (b + 1) * ROWS)  # an id the Dihedral leaves alone
        np.savez_compressed(src / f"data{b}_0.npz", **rows)  # idx 0 in every bucket, as KataGo's shuffler does
        parts.append(rows)
    convert(src, root / "conv", progress=False)
    source = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return root / "conv", source


def unpack_to_float(batch: dict[str, np.ndarray]) -> dict[str, object]:
    """What KataGo's trainer does per batch: bit planes to float32 (N, 22, 19, 19)."""
    out = dict(batch)
    bits = np.unpackbits(batch[PACKED], axis=-1, count=361)
    out["binaryInputNCHW"] = bits.reshape(-1, 22, 19, 19).astype(np.float32)
    return out


def stream(conv: Path, workers: int = 0, **kw) -> dict[str, np.ndarray]:
    ds = StreamingMixedShardDataset(
        [conv], pool_size=150, batch_size=64, random_seed=1, transform=unpack_to_float, **kw
    )
    loader = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers)
    parts = [{k: v.numpy() for k, v in b.items()} for b in loader]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("workers", [0, 2])
def test_every_position_under_every_symmetry_once_equal_to_an_independent_transform(
    katago: tuple[Path, dict[str, np.ndarray]], workers: int
) -> None:
    conv, source = katago
    got = stream(conv, workers, augmentation=Dihedral(**KATAGO, symmetries=8))
    ids = got["globalInputNC"][:, 0].astype(np.int64)
    assert len(ids) == 8 * ROWS * FILES and np.array_equal(np.bincount(ids), np.full(ROWS * FILES, 8))
    seen: dict[int, set[int]] = {}
    for i, row in enumerate(ids.tolist()):
        bits = unpacked(source[PACKED][row])
        # Which symmetry: the one whose independent transform of the source planes matches.
        matches = [
            s
            for s in range(8)
            if np.array_equal(np.unpackbits(got[PACKED][i], count=361, axis=-1).reshape(22, 19, 19), element(bits, s))
        ]
        assert len(matches) == 1, (row, matches)  # real boards: the 8 transforms are distinct
        s = matches[0]
        assert s not in seen.setdefault(row, set())
        seen[row].add(s)
        np.testing.assert_array_equal(got["binaryInputNCHW"][i], element(bits, s).astype(np.float32), strict=True)
        np.testing.assert_array_equal(got["valueTargetsNCHW"][i], element(source["valueTargetsNCHW"][row], s))
        for name in KATAGO["square_vectors"]:
            np.testing.assert_array_equal(got[name][i], vector_element(source[name][row], s), strict=True)
        for name in ("globalInputNC", "globalTargetsNC", "scoreDistrN", "metadataInputNC"):
            np.testing.assert_array_equal(got[name][i], source[name][row], strict=True)
    assert all(len(v) == 8 for v in seen.values())


def test_the_transform_runs_in_validation_too(katago: tuple[Path, dict[str, np.ndarray]]) -> None:
    """enable_augmentation=False never calls the augmentation, but the transform still runs: training and
    validation batches have the same fields and dtypes."""
    conv, source = katago
    train = stream(conv, augmentation=Dihedral(**KATAGO, symmetries=8))
    val = stream(conv, augmentation=Dihedral(**KATAGO, symmetries=8), enable_augmentation=False)
    assert {k: v.dtype for k, v in val.items()} == {k: v.dtype for k, v in train.items()}
    ids = val["globalInputNC"][:, 0].astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(ROWS * FILES))  # once each, untransformed
    np.testing.assert_array_equal(val[PACKED], source[PACKED][ids])
    want = unpacked(source[PACKED][ids]).astype(np.float32)
    np.testing.assert_array_equal(val["binaryInputNCHW"], want, strict=True)


class Negate:
    """A custom augmentation of factor 1: it must be applied, not skipped."""

    factor = 1

    def apply(self, batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]:
        assert not symmetry_ids.any()
        out = dict(batch)
        out["globalTargetsNC"] = -batch["globalTargetsNC"]
        return out


def test_an_augmentation_of_factor_one_is_applied_and_the_transform_follows_it(
    katago: tuple[Path, dict[str, np.ndarray]],
) -> None:
    conv, source = katago
    seen_by_transform = []

    def transform(batch: dict[str, np.ndarray]) -> dict[str, object]:
        seen_by_transform.append(batch["globalTargetsNC"].copy())
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}  # tensors pass through

    ds = StreamingMixedShardDataset(
        [conv], pool_size=150, batch_size=64, random_seed=1, augmentation=Negate(), transform=transform
    )
    batches = list(ds)
    got = {k: np.concatenate([b[k].numpy() for b in batches]) for k in ("globalInputNC", "globalTargetsNC")}
    ids = got["globalInputNC"][:, 0].astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(ROWS * FILES))
    np.testing.assert_array_equal(got["globalTargetsNC"], -source["globalTargetsNC"][ids])
    np.testing.assert_array_equal(np.concatenate(seen_by_transform), got["globalTargetsNC"])  # after the augmentation
