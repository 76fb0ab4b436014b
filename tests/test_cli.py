"""Tests for the mmpool command line (mmpool.cli, python -m mmpool, tools/convert_shards.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmpool.cli import COMMANDS, main
from mmpool.format.manifest import read_manifest
from mmpool.ops.check import inspect_dirs
from mmpool.ops.demo import DEMO_MARKER
from mmpool.testing.synthetic import make_synthetic

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"converted (\d+) shards \(([\d,]+) records, [\d.]+ MB\) into (\d+) packs in [\d.]+ s \([\d.]+ MB/s\); "
    r"(\d+) shards were already converted"
)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (d,) = make_synthetic(tmp_path / "src", [3], 300)
    return d


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_registered() -> None:
    assert list(COMMANDS) == ["convert", "inspect", "verify", "plan", "demo", "bench"]


def test_convert_inspect_verify(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"
    code, out, err = run(["convert", str(src), str(dst), "--pack-size", "200K", "--quiet"], capsys)
    assert (code, err) == (0, "")
    m = SUMMARY.fullmatch(out.rstrip("\n"))
    assert m and m.groups() == ("3", "900", "2", "0")
    assert [p.rows for p in read_manifest(dst).packs] == [600, 300]  # 200K = 204800 bytes: two shards a pack

    code, out, err = run(["convert", str(src), str(dst), "--quiet"], capsys)
    m = SUMMARY.fullmatch(out.rstrip("\n"))
    assert code == 0 and m and m.groups() == ("0", "0", "0", "3")

    code, out, err = run(["inspect", str(dst)], capsys)
    assert (code, out, err) == (0, inspect_dirs([dst]) + "\n", "")
    assert "  shards: 3 (numbers 0-2)\n  records: 900\n" in out

    code, out, err = run(["verify", "--quiet", str(dst)], capsys)
    assert (code, out, err) == (0, "ok: 3 shards, 900 records verified\n", "")


def test_convert_options(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"
    code, out, _ = run(
        [
            "convert",
            str(src),
            str(dst),
            "--format",
            "hdf5",
            "--pack-size",
            "1",
            "--workers",
            "2",
            "--allow-nonfinite",
            "--quiet",
        ],
        capsys,
    )
    m = SUMMARY.fullmatch(out.rstrip("\n"))
    assert code == 0 and m and m.groups() == ("3", "900", "3", "0")
    assert read_manifest(dst).pack_format == "hdf5"
    assert sorted(p.name for p in dst.iterdir()) == ["mmpool.json", "pack-00000.h5", "pack-00001.h5", "pack-00002.h5"]


def test_verify_reports_problems(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"
    assert main(["convert", str(src), str(dst), "--quiet"]) == 0
    os.truncate(dst / "pack-00000.npy", 5000)
    capsys.readouterr()
    code, out, err = run(["verify", "--quiet", str(dst)], capsys)
    size = read_manifest(dst).packs[0].bytes
    assert (code, err) == (1, "")
    assert out == (
        f"{dst}: {dst / 'pack-00000.npy'}: pack file truncated: expected {size} bytes, found 5000; "
        "restore it or convert the shards again\n"
    )


def test_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inspect", str(tmp_path / "missing")], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"mmpool: error: {tmp_path / 'missing'} does not exist: it is not a converted directory; "
        f"convert its shards first: mmpool convert SRC {tmp_path / 'missing'}\n"
    )


def test_multiline_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (a,) = make_synthetic(tmp_path / "a", [1], 10)
    (b,) = make_synthetic(tmp_path / "b", [2], 10, channels=2)
    dst = tmp_path / "dst"
    assert main(["convert", str(a), str(dst), "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = run(["convert", str(b), str(dst), "--quiet"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    shard = str(b / "shard_00001.npz")  # shard_00000.npz has the name of a converted shard: skipped
    assert err == (
        f"mmpool: error: {shard!r}: its fields differ from {dst / 'mmpool.json'}, so it cannot share one record "
        f"schema with it:; field 'planes' is uint8 (2, 8, 8) here but uint8 (4, 8, 8) in {dst / 'mmpool.json'}: "
        "--pad only lengthens the last axis; take the larger schema as the reference (--like a directory holding "
        "it, or convert those shards first)\n"
    )


def test_bad_pack_size(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["convert", str(src), str(tmp_path / "dst"), "--pack-size", "lots"], capsys)
    assert (code, out) == (2, "")
    assert err == "mmpool: error: pack size 'lots': give bytes or a size such as '512M' or '2G'\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["convert"])
    assert exc.value.code == 2
    assert "the following arguments are required: src, dst" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_verbose_logs(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["convert", "-v", str(src), str(tmp_path / "dst"), "--quiet"], capsys)
    assert code == 0
    assert f"mmpool: INFO: {src}: 3 shards, 0 already converted, 3 to convert\n" in err
    assert "DEBUG" not in err
    code, _, err = run(["-vv", "convert", str(src), str(tmp_path / "dst2"), "--quiet"], capsys)
    assert code == 0
    assert f"mmpool: DEBUG: wrote {tmp_path / 'dst2' / 'pack-00000.npy'}: 3 shards, 900 records\n" in err
    code, _, err = run(["convert", str(src), str(tmp_path / "dst3"), "--quiet"], capsys)
    assert (code, err) == (0, "")


def test_demo_refuses_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    code, out, err = run(["demo", "--dir", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert err == f"mmpool: error: {tmp_path} exists and was not made by the demo; give an empty or new --dir\n"
    assert (tmp_path / "mine.txt").read_text() == "precious"
    assert not (tmp_path / DEMO_MARKER).exists()


def test_scripts(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # From another working directory, so the tool finds mmpool through the path it adds itself.
    tool = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_shards.py"), str(src), str(dst), "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert tool.returncode == 0, tool.stderr
    m = SUMMARY.fullmatch(tool.stdout.rstrip("\n"))
    assert m and m.groups() == ("3", "900", "1", "0")

    verify = subprocess.run(
        [sys.executable, "-m", "mmpool", "verify", "--quiet", str(dst)], capture_output=True, text=True, cwd=REPO
    )
    assert (verify.returncode, verify.stdout) == (0, "ok: 3 shards, 900 records verified\n")

    bad = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_shards.py"), str(tmp_path / "nope"), str(dst)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == f"mmpool: error: shard directory {str(tmp_path / 'nope')!r} does not exist\n"
