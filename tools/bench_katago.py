"""Benchmark: 8 symmetries on KataGo rows, and unpacking their bit-packed planes.

    python tools/bench_katago.py [--rows 8192] [--rounds 15] [--threads 1]

Rows come from ``mmpool.testing.synthetic.katago_rows`` (8,443 bytes each, 19x19), held in RAM; every batch gathers 1024
random rows field by field (``np.take``, as the store's gather hands them out), then:

(a) ``Dihedral`` with the KataGo configuration (packed inputs, value targets, policy and q-value targets), random
    ids in 0..7, against no augmentation: examples/s of gather + augment vs gather alone.
(b) The packed planes alone: ``Dihedral``'s byte lookup tables against unpacking, permuting the squares by each
    symmetry's map and packing again (grouped by symmetry, as vectorised as numpy allows).
(c) ``mmpool.unpack_planes`` (torch) against ``np.unpackbits`` + ``astype(float32)`` + reshape, one batch.

Every contender runs in each round, in alternating order; the figure is the median over rounds (the machine is
shared), ratios are medians of per-round ratios. Imports the installed mmpool.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from mmpool import Dihedral, unpack_planes
from mmpool.testing.synthetic import katago_rows

BATCH = 1024
PACKED = "binaryInputNCHWPacked"


def katago_dihedral() -> Dihedral:
    return Dihedral(
        packed_planes={PACKED: (19, 19)},
        planes=["valueTargetsNCHW"],
        square_vectors=["policyTargetsNCMove", "qValueTargetsNCMove"],
        symmetries=8,
    )


def rounds(contenders: dict[str, Callable[[], object]], n: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per call of every contender in each of ``n`` rounds (``repeat`` calls a round), order alternating."""
    out: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for f in contenders.values():
        f()  # warm: tables built, pages touched
    for r in range(n):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for _ in range(repeat):
                contenders[name]()
            out[name].append((time.perf_counter() - t) / repeat)
    return out


def unpack_permute_pack(x: np.ndarray, ids: np.ndarray, gather: np.ndarray) -> np.ndarray:
    """The baseline for (b): unpack the planes, permute squares by each symmetry's map, pack again."""
    n, c, nbytes = x.shape
    bits = np.unpackbits(x, axis=-1, count=gather.shape[1])
    out = np.empty_like(bits)
    for s in np.unique(ids).tolist():
        sel = np.flatnonzero(ids == s)
        out[sel] = np.take(bits[sel], gather[s], axis=-1)
    return np.packbits(out, axis=-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192, help="rows held in RAM to gather from")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads for (c); numpy is single-threaded")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = katago_rows(args.rows, seed=0)
    row_bytes = sum(v.itemsize * int(np.prod(v.shape[1:])) for v in data.values())
    rng = np.random.default_rng(1)
    aug = katago_dihedral()
    aug.validate({k: (v.dtype, v.shape[1:]) for k, v in data.items()})

    def gather() -> dict[str, np.ndarray]:
        idx = rng.integers(0, args.rows, size=BATCH)
        return {k: np.take(v, idx, axis=0) for k, v in data.items()}

    def augmented() -> dict[str, np.ndarray]:
        return aug.apply(gather(), rng.integers(0, 8, size=BATCH))

    res = rounds({"plain": gather, "dihedral": augmented}, args.rounds, 10)
    ratio = float(np.median(np.array(res["plain"]) / np.array(res["dihedral"])))
    plain, dih = (BATCH / float(np.median(res[k])) for k in ("plain", "dihedral"))
    print(f"rows of {row_bytes} bytes, batches of {BATCH}, {args.rounds} rounds")
    print(f"(a) gather alone {plain:,.0f} examples/s; gather + Dihedral x8 {dih:,.0f} examples/s: ratio {ratio:.2f}")
    print(
        f"    Dihedral.apply alone ~{(float(np.median(res['dihedral'])) - float(np.median(res['plain']))) * 1e3:.1f} ms/batch"
    )

    batch = gather()
    ids = rng.integers(0, 8, size=BATCH)
    maps = aug.square_map
    inverse_maps = np.argsort(maps, axis=1)
    x = batch[PACKED]
    only_packed = Dihedral(packed_planes={PACKED: (19, 19)}, planes=(), symmetries=8)
    lut = only_packed.apply({PACKED: x}, ids)[PACKED]
    assert np.array_equal(lut, unpack_permute_pack(x, ids, inverse_maps)), "the two packed transforms disagree"
    res_b = rounds(
        {
            "lookup": lambda: only_packed.apply({PACKED: x}, ids),
            "unpack-permute-pack": lambda: unpack_permute_pack(x, ids, inverse_maps),
        },
        args.rounds,
        5,
    )
    t_lut, t_upp = (float(np.median(res_b[k])) * 1e3 for k in ("lookup", "unpack-permute-pack"))
    ratio_b = float(np.median(np.array(res_b["unpack-permute-pack"]) / np.array(res_b["lookup"])))
    print(
        f"(b) packed planes, 8 symmetries: byte lookup {t_lut:.1f} ms/batch, unpack-permute-pack {t_upp:.1f} ms/batch: "
        f"lookup {ratio_b:.2f}x faster"
    )

    t = torch.from_numpy(x)
    want = np.unpackbits(x, axis=-1, count=361).reshape(BATCH, 22, 19, 19).astype(np.float32)
    assert np.array_equal(unpack_planes(t).numpy(), want)
    res_c = rounds(
        {
            "numpy": lambda: np.unpackbits(x, axis=-1, count=361).reshape(BATCH, 22, 19, 19).astype(np.float32),
            "unpack_planes": lambda: unpack_planes(t),
        },
        args.rounds,
        5,
    )
    t_np, t_torch = (float(np.median(res_c[k])) * 1e3 for k in ("numpy", "unpack_planes"))
    ratio_c = float(np.median(np.array(res_c["numpy"]) / np.array(res_c["unpack_planes"])))
    print(
        f"(c) unpack to float32 (N, 22, 19, 19): numpy {t_np:.1f} ms, unpack_planes {t_torch:.1f} ms "
        f"({args.threads} torch thread(s)): unpack_planes {ratio_c:.2f}x numpy's speed"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
