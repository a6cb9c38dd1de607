"""The CI entry point must not fail by chance.

`.ci/run` runs under `set -o pipefail` with its output going to a file. A pipeline whose reader
stops before its writer has finished (`make --version | head -n 1`) kills the writer with
SIGPIPE whenever the reader wins the race, pipefail turns the 141 into a failed script, and CI
goes red before any test runs. Two guards: a static scan of every pipeline in `.ci/run` and the
Makefile for readers that stop early, and the preamble run many times with output to a file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"
MAKEFILE = ROOT / "Makefile"

# Readers that may exit before reading all their input: head, grep -q / -m / -l, sed with q,
# awk with exit, and `read` in a pipeline.
EARLY_READER = re.compile(
    r"\|\s*(?:head\b|grep\s+(?:-\w*[qlm]\w*|--quiet|--max-count)|sed\b[^|]*\bq\b|awk\b[^|]*\bexit\b|read\b)"
)


def _pipelines(text: str) -> list[tuple[int, str]]:
    """Lines holding a shell pipe (`|` but not `||`), comments dropped."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if re.search(r"(?<!\|)\|(?!\|)", code):
            found.append((number, code))
    return found


@pytest.mark.parametrize("path", [CI_RUN, MAKEFILE], ids=lambda p: p.name)
def test_no_pipeline_reader_stops_early(path: Path) -> None:
    offending = [(n, line) for n, line in _pipelines(path.read_text()) if EARLY_READER.search(line)]
    assert offending == [], f"{path.name}: a reader that stops early under pipefail: {offending}"


def test_scan_catches_the_original_bug() -> None:
    """The line that broke CI is caught by the scan (so the scan is not vacuous)."""
    assert EARLY_READER.search("make --version | head -n 1")
    assert EARLY_READER.search("ps aux | grep -q coord")
    assert not EARLY_READER.search("make --version | sed -n 1p")
    assert _pipelines("a || b\n# x | head\n") == []


def test_preamble_never_fails_with_output_to_a_file(tmp_path: Path) -> None:
    """The tools preamble, run 40 times with stdout and stderr to a file and no terminal.
    (It needs make, as the README's two commands do; .ci/run installs it when missing.)"""
    assert shutil.which("make"), "make is needed (the README's quick start uses it)"
    log = tmp_path / "ci.log"
    for attempt in range(40):
        with log.open("w") as out:
            done = subprocess.run(
                ["bash", str(CI_RUN), "--tools-only"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                timeout=60,
                check=False,
            )
        text = log.read_text()
        assert done.returncode == 0, f"attempt {attempt}: exit {done.returncode}\n{text}"
        assert "== tools" in text and "GNU Make" in text, text
