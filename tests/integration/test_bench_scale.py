"""``python -m bench.scale`` runs end to end on the coord side and prints its table.

Tiny sizes (2,000 znodes) and ZooKeeper left out, so it runs in seconds; what the benchmark
measures at real sizes is its own business (bench/README.md), this only keeps it from rotting:
every step ran, every row of the table has a number, nothing exited, the JSON report is there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.scale import METRICS

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def test_bench_scale_runs_on_coord_with_tiny_sizes(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "bench.scale",
        "--nodes",
        "2000",
        "--ensemble-nodes",
        "2000",
        "--value-bytes",
        "50",
        "--systems",
        "coord",
        "--deadline",
        "60",
        "--output",
        str(tmp_path),
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"

    rows = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.split(" | ")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    for _key, label, _form in METRICS:
        assert label in rows, f"no row {label!r} in:\n{done.stdout}"
        coord, zookeeper, ratio = rows[label]
        assert NUMBER.match(coord), f"{label}: {coord!r} is not a number"
        assert zookeeper == "-" and ratio == "-"

    (report_path,) = tmp_path.glob("scale-*.json")
    report = json.loads(report_path.read_text())
    results = report["results"]["coord"]
    assert results["server_exits"] == 0
    assert results["load_znodes_per_s"] > 0 and results["ensemble_load_znodes_per_s"] > 0
    assert results["restart_s"] > 0 and results["catch_up_s"] > 0
    assert results["data_dir_mib"] > 0
    assert report["details"]["coord"]["znodes_reported"] >= 2000
    assert "coord" not in report["notes"]
