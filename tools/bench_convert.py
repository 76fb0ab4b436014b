"""Benchmark: converting engine data at real record sizes, against decompressing and copying the same files.

    python tools/bench_convert.py --scale small|large [--out bench_out] [--data bench_out/data]

KataGo: ``.npz`` shards written with ``savez_compressed`` (KataGo's writer), its 19x19 keys, dtypes and shapes
(~7.6 KB a row with q-values; contents sparse like real planes and targets, so they compress like them).
lc0: V6 games (8,356 B a record) as ``.gz`` files and in ``.tar`` archives.

Each is timed as ``mmpool.convert.converter.convert`` with 1 and 2 worker processes, and as a plain decompress-and-copy of
the same files in one process (every npz member or gzip stream decompressed and written to one file, fsynced:
convert fsyncs its packs too), sources warm in the page cache. Reported: MB/s of output (records written) and the
ratio convert / copy, which a shared, noisy machine leaves comparable; the median of the rounds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import benchdata as bd  # a sibling module: tools/ is on the path of a script run from it
import numpy as np

from mmpool.convert import lc0
from mmpool.convert.converter import convert

SCALES = {
    "small": {"kg_files": 8, "kg_rows": 2000, "games": 240, "game_rows": 120, "rounds": 3},
    "large": {"kg_files": 24, "kg_rows": 8000, "games": 1200, "game_rows": 150, "rounds": 3},
}
PACK = "32M"  # several packs even at the small scale: packs are what --workers converts in parallel


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def katago_rows(rows: int, seed: int) -> dict[str, np.ndarray]:
    """KataGo v1.17.2 19x19 rows: sparse bit planes, a few policy targets, mostly-zero score distributions."""
    rng = np.random.default_rng(seed)
    bits = rng.random((rows, 22, 361)) < 0.08
    planes = np.packbits(np.pad(bits, ((0, 0), (0, 0), (0, 46 * 8 - 361))), axis=-1)
    policy = np.zeros((rows, 2, 362), np.int16)
    moves = rng.integers(0, 362, (rows, 12))
    np.put_along_axis(policy[:, 0], moves, rng.integers(1, 200, (rows, 12)).astype(np.int16), axis=1)
    score = np.zeros((rows, 842), np.int8)
    score[:, 400:440] = rng.integers(0, 100, (rows, 40))
    value = rng.integers(-1, 2, (rows, 5, 19, 19), dtype=np.int8) * (rng.random((rows, 5, 1, 1)) < 0.5)
    qv = np.zeros((rows, 3, 362), np.int16)
    np.put_along_axis(qv[:, 0], moves, rng.integers(-3000, 3000, (rows, 12)).astype(np.int16), axis=1)
    return {
        "binaryInputNCHWPacked": planes,
        "globalInputNC": rng.random((rows, 19), dtype=np.float32).round(2),
        "policyTargetsNCMove": policy,
        "globalTargetsNC": rng.random((rows, 80), dtype=np.float32).round(3),
        "scoreDistrN": score,
        "valueTargetsNCHW": value.astype(np.int8),
        "qValueTargetsNCMove": qv,
    }


def make_sources(root: Path, cfg: dict) -> tuple[Path, Path]:
    """The KataGo and lc0 source directories (cached under ``root``)."""
    tag = f"{cfg['kg_files']}x{cfg['kg_rows']}-{cfg['games']}x{cfg['game_rows']}"
    kg, games = root / f"convert-{tag}" / "katago", root / f"convert-{tag}" / "lc0"
    done = root / f"convert-{tag}" / bd.COMPLETE
    if done.exists():
        return kg, games
    shutil.rmtree(done.parent, ignore_errors=True)
    kg.mkdir(parents=True)
    games.mkdir(parents=True)
    for k in range(cfg["kg_files"]):
        np.savez_compressed(kg / f"data{k % 4}_{k // 4}.npz", **katago_rows(cfg["kg_rows"], k))
    n = cfg["games"]
    half = n // 2
    for g in range(half):  # half as .gz files, half in archives of 60 games
        lc0.write_game(games / f"game_{g:06d}.gz", lc0.make_records(cfg["game_rows"], 6, 0, g))
    for a, first in enumerate(range(half, n, 60)):
        members = [
            (f"training.{g}.gz", lc0.make_records(cfg["game_rows"], 6, 0, g)) for g in range(first, min(n, first + 60))
        ]
        lc0.write_archive(games / f"training-{a:04d}.tar", members)
    done.write_text("ok")
    return kg, games


def copy_decompressed(src: Path, out: Path) -> int:
    """Decompress every npz member / gzip game of ``src`` into one file, fsynced; returns the bytes written."""
    written = 0
    with open(out, "wb") as f:
        for path in sorted(src.iterdir()):
            if path.suffix == ".npz":
                with zipfile.ZipFile(path) as z:
                    for name in z.namelist():
                        written += f.write(z.read(name))
            elif path.suffix == ".gz":
                written += f.write(gzip.decompress(path.read_bytes()))
            else:
                for game in lc0.list_games(src, [path.name]):
                    with open(game.path, "rb") as t:
                        t.seek(game.offset)
                        written += f.write(gzip.decompress(t.read(game.size)))
        f.flush()
        os.fsync(f.fileno())
    return written


def measure(src: Path, scratch: Path, rounds: int) -> dict[str, float]:
    """Median output MB/s of the copy and of convert with 1 and 2 workers, in alternating rounds."""
    times: dict[str, list[float]] = {"copy": [], "w1": [], "w2": []}
    out_bytes = {"copy": 0, "w1": 0, "w2": 0}
    for _ in range(rounds):
        for what in times:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            bd.warm([src])
            t0 = time.perf_counter()
            if what == "copy":
                out_bytes[what] = copy_decompressed(src, scratch / "copy.bin")
            else:
                s = convert(
                    src, scratch / "dst", pack_size=PACK, workers=int(what[1:]), rows_per_shard=8192, progress=False
                )
                out_bytes[what] = s.bytes
            times[what].append(time.perf_counter() - t0)
    shutil.rmtree(scratch, ignore_errors=True)
    return {k: out_bytes[k] / 1e6 / bd.median(v) for k, v in times.items()} | {"output_mb": out_bytes["w1"] / 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bd.add_common_args(p, SCALES)
    args = p.parse_args(argv)
    cfg = SCALES[args.scale]
    kg, games = make_sources(bd.data_root(args), cfg)
    rows, details = [], {}
    for name, src in (("KataGo npz (savez_compressed)", kg), ("lc0 V6 .gz games and .tar archives", games)):
        mbs = measure(src, Path(args.out) / "scratch-convert", cfg["rounds"])
        details[name] = mbs
        log(f"{name}: copy {mbs['copy']:.0f} MB/s, convert {mbs['w1']:.0f} MB/s, --workers 2 {mbs['w2']:.0f} MB/s")
        note = f"{mbs['output_mb']:.0f} MB of records; median of {cfg['rounds']} rounds"
        rows.append(
            bd.result(f"{name}: convert MB/s out vs decompress+copy", mbs["w1"], mbs["copy"], 0.5, "MB/s", note)
        )
        rows.append(
            bd.result(f"{name}: convert --workers 2 MB/s out vs decompress+copy", mbs["w2"], mbs["copy"], 0.5, "MB/s")
        )
    path = bd.save(args.out, "convert", args.scale, rows, details)
    print(f"## convert engine data ({args.scale})\n\n{bd.table(rows)}\n\nresults: {path}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
