"""Run the benchmark suite and write ``OUT/REPORT.md`` with one table per benchmark, and PNG plots.

    python tools/bench.py --scale small|large [--out bench_out] [--data DIR] [--only gather stream ...]
    mmpool bench --scale small                    (the same, from the command line)

Each benchmark runs as its own subprocess (a fresh interpreter, so one benchmark's memory never counts in the
next): ``bench_gather.py`` (gather, conversion), ``bench_stream.py`` (pool, stream, workers, augmentation), then
``bench_resume.py``, ``bench_peers.py`` and any other ``tools/bench_*.py`` that exist. Each is given ``--scale``,
``--out`` and ``--data`` when its ``--help`` lists them. JSON results they write under ``OUT`` are collected into
the report (a tool writing none is shown by its printed output).
Every speed figure is a ratio against a baseline measured in the same run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import benchdata as bd  # a sibling module: tools/ is on the path of a script run from it

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent

# name -> script; the first two are ours (rows in benchdata's format), the others are collected as they come.
SUITE = {
    "gather": "bench_gather.py",
    "stream": "bench_stream.py",
    "resume": "bench_resume.py",
    "peers": "bench_peers.py",
}


def suite() -> dict[str, str]:
    """SUITE, then any other ``tools/bench_*.py`` (benchmarks added since), by name."""
    found = dict(SUITE)
    for path in sorted(TOOLS.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if path.name not in found.values():
            found[name] = path.name
    return found


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    import numpy
    import psutil
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _flags(script: Path) -> set[str]:
    """The long options a tool's ``--help`` lists."""
    try:
        text = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {f for f in ("--scale", "--out", "--data") if f in text}


def run_tool(name: str, script: Path, scale: str, out: Path, data: Path, timeout: float | None) -> dict:
    """Run one benchmark; returns its exit code, seconds, output and the JSON files it wrote."""
    flags = _flags(script)
    cmd = [sys.executable, str(script)]
    for flag, value in (("--scale", scale), ("--out", str(out)), ("--data", str(data))):
        if flag in flags:
            cmd += [flag, value]
    log(f"{name}: {' '.join(cmd[1:])}")

    def snapshot() -> dict[Path, float]:
        return {p: p.stat().st_mtime for p in out.glob("*.json") if not p.name.startswith(".")}

    before = snapshot()
    start = time.time()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.getcwd())
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    seconds = time.time() - start
    # Its own results: new or changed files named after it (others may write to OUT at the same time).
    written = sorted(p for p, mtime in snapshot().items() if before.get(p) != mtime and p.stem.startswith(name))
    log(f"{name}: exit {code} after {seconds:.0f}s; wrote {[p.name for p in written]}")
    if code not in (0, 1):  # 1 = ran, some target missed
        sys.stderr.write(stderr[-4000:])
    return {
        "name": name,
        "command": " ".join(["python", *cmd[1:]]),
        "code": code,
        "seconds": seconds,
        "stdout": stdout,
        "stderr_tail": stderr[-2000:],
        "json": [str(p) for p in written],
    }


def _generic_table(rows: list) -> str:
    """A markdown table of a list of flat dicts (another tool's JSON)."""
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (dict, list))))

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "/")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def section(run: dict) -> tuple[str, list[dict]]:
    """The report section of one benchmark, and its rows in benchdata's format (for the plots)."""
    title = f"## {run['name']}\n\n`{run['command']}` -- exit {run['code']}, {run['seconds']:.0f} s\n"
    ours: list[dict] = []
    parts = []
    for path in run["json"]:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("rows"), list) and doc["rows"] and "ratio" in doc["rows"][0]:
            ours += doc["rows"]
            parts.append(f"From `{path}`:\n\n{bd.table(doc['rows'])}")
        elif isinstance(doc, list) and _generic_table(doc):
            parts.append(f"From `{path}`:\n\n{_generic_table(doc)}")
        elif isinstance(doc, dict) and isinstance(doc.get("rows"), list) and _generic_table(doc["rows"]):
            parts.append(f"From `{path}`:\n\n{_generic_table(doc['rows'])}")
        elif isinstance(doc, dict):
            flat = {k: v for k, v in doc.items() if not isinstance(v, (dict, list))}
            if flat:
                parts.append(f"From `{path}`:\n\n{_generic_table([flat])}")
    if not parts:  # no JSON we can read: the tool's own printed output
        text = "\n".join((run.get("stdout", "").strip() or run["stderr_tail"].strip()).splitlines()[-80:])
        parts.append(text if "|" in text else f"```\n{text}\n```")
    return title + "\n" + "\n\n".join(parts) + "\n", ours


def plots(rows: list[dict], out: Path, scale: str) -> list[Path]:
    """Bar charts: every ratio against its target, and the throughput figures of mmpool vs baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if rows:
        labels = [r["metric"] if len(r["metric"]) < 70 else r["metric"][:67] + "..." for r in rows]
        # Margin over the target: >= 1 passes, whichever way the target points.
        margin = []
        for r in rows:
            target = float(r["target"].split()[1])
            m = r["ratio"] / target if r["target"].startswith(">=") else target / max(r["ratio"], 1e-12)
            margin.append(min(max(m, 1e-3), 1e3))  # drawn on a log scale
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
        colours = ["tab:green" if r["pass"] else "tab:red" for r in rows]
        ax.barh(range(len(rows)), margin, color=colours)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(min(0.5, min(margin) / 1.5), max(2.0, max(margin) * 3))  # room for the labels
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(
            "margin over the target: ratio / target, or target / ratio where lower is better (>= 1 passes)", fontsize=8
        )
        ax.set_title(f"mmpool benchmarks ({scale}): every figure against its target")
        for i, (m, r) in enumerate(zip(margin, rows)):
            ax.text(m, i, f" {r['ratio']:.2f} ({r['target']})", va="center", fontsize=7)
        fig.tight_layout()
        path = out / f"ratios-{scale}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    speed = [r for r in rows if r["unit"] in ("rows/s", "examples/s", "MB/s")]
    if speed:
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(speed) + 1.5))
        y = range(len(speed))
        ax.barh(
            [i - 0.2 for i in y],
            [r["mmpool"] / r["baseline"] for r in speed],
            height=0.4,
            label="mmpool",
            color="tab:blue",
        )
        ax.barh([i + 0.2 for i in y], [1.0] * len(speed), height=0.4, label="baseline (same run)", color="tab:gray")
        ax.set_yticks(
            list(y), [f"{r['metric'][:60]}\n({r['baseline']:.3g} {r['unit']} baseline)" for r in speed], fontsize=7
        )
        ax.invert_yaxis()
        ax.set_xlabel("throughput relative to its baseline (the rates in the tables)")
        ax.legend(loc="lower right")
        ax.set_title(f"throughput ({scale})")
        fig.tight_layout()
        path = out / f"throughput-{scale}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=["small", "large"], default="small")
    p.add_argument("--out", default="bench_out", help="results, plots and REPORT.md (default bench_out)")
    p.add_argument("--data", default=None, help="benchmark data cache (default OUT/data)")
    p.add_argument("--only", nargs="+", choices=sorted(suite()), help="run only these benchmarks")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark")
    p.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: rebuild REPORT.md and the plots from the last run (OUT/suite-SCALE.json)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    info = machine()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    command = " ".join(["python", "tools/bench.py", *(argv if argv is not None else sys.argv[1:])])
    runs = []
    if args.collect:
        last = json.loads((out / f"suite-{args.scale}.json").read_text())
        info, started, command, runs = last["machine"], last["date"], last["command"], last["runs"]
    for name, script in ({} if args.collect else suite()).items():
        if args.only and name not in args.only:
            continue
        if not (TOOLS / script).exists():
            log(f"{name}: {script} does not exist, skipped")
            continue
        runs.append(run_tool(name, TOOLS / script, args.scale, out, data, args.timeout))
    sections, rows = [], []
    for run in runs:
        text, ours = section(run)
        sections.append(text)
        rows += ours
    pngs = plots(rows, out, args.scale)
    failed = [r["metric"] for r in rows if not r["pass"]]
    load_end = last["load_end"] if args.collect else [round(x, 2) for x in os.getloadavg()]
    finished = last.get("finished", "?") if args.collect else time.strftime("%H:%M:%S")
    head = [
        f"# mmpool benchmarks ({args.scale})",
        "",
        f"- date: {started} (finished {finished})",
        f"- command: `{command}`",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['ram_gb']} GB RAM, {info['platform']}",
        f"- python {info['python']}, numpy {info['numpy']}, torch {info['torch']}",
        f"- load average at start {info['load_average']}, at end {load_end} (a shared machine: every speed is a "
        "ratio against a baseline timed in the same run)",
        f"- targets met: {sum(r['pass'] for r in rows)} of {len(rows)}"
        + (f"; missed: {'; '.join(failed)}" if failed else ""),
        "",
    ]
    head += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    report = out / "REPORT.md"
    report.write_text("\n".join(head) + "\n" + "\n".join(sections))
    (out / f"REPORT-{args.scale}.md").write_text(report.read_text())  # kept when the other scale runs next
    (out / f"suite-{args.scale}.json").write_text(
        json.dumps(
            {
                "date": started,
                "finished": finished,
                "command": command,
                "machine": info,
                "load_end": load_end,
                "runs": runs,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(report.read_text())
    log(f"wrote {report}")
    return 0 if all(r["code"] in (0, 1) for r in runs) else 2


if __name__ == "__main__":
    sys.exit(main())
