"""The design docs live in the repository, and what cites them stays true.

- Nothing points outside the repository for its design docs: the repository must
  stand alone.
- Every correctness rule that code cites ("docs/correctness.md, rule 4", or "rule 4"
  in a file that names docs/correctness.md) is defined in docs/correctness.md, as a
  heading ``### Rule N — title``. Rules keep their numbers for good.
- Every module path a doc names (`coord/server/core.py`) and every page it links to
  exists.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CORRECTNESS = DOCS / "correctness.md"

# Built from parts, so that this file does not match itself.
OUTSIDE_REFERENCES = ["/".join(["..", "shared"]), "shared/" + "DESIGN", "shared/" + "CORRECTNESS"]

# Generated or local-only: what .gitignore leaves out, plus the virtualenv and git itself.
SKIPPED_DIRS = frozenset(
    {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", "build", "dist"}
    | {"coord-data", "data", "results"}
)
SKIPPED_SUFFIXES = (".mdb", ".pyc")
FILE_BYTES_MAX = 4 << 20

SOURCE_DIRS = ("coord", "client", "recipes", "tests", "bench", "examples")

RULE_HEADING = re.compile(r"^### Rule (\d+) — \S.*$", re.MULTILINE)
RULE_REFERENCE = re.compile(r"\b[Rr]ules?\s+(\d+(?:\s*(?:-|\u2013|,|and|or)\s*\d+)*)")
OUTSIDE_DOC_NAMES = re.compile(r"\bCORRECTNESS\b|\bDESIGN\b|\bSTYLE\.md\b")
MODULE_PATH = re.compile(r"`((?:coord|client|recipes|tests|bench|examples|docs)/[^`\s]*)`")
PAGE_LINK = re.compile(r"\]\(([^)\s#]*\.md)(#[^)\s]*)?\)")


def repo_files() -> Iterator[Path]:
    """Every file of the repository, without generated and local-only ones."""
    stack = [ROOT]
    while stack:
        directory = stack.pop()
        for entry in sorted(directory.iterdir()):
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS and not entry.name.endswith(".egg-info"):
                    stack.append(entry)
            elif entry.is_file() and not entry.name.endswith(SKIPPED_SUFFIXES):
                yield entry


def python_files() -> list[Path]:
    paths = (path for name in SOURCE_DIRS for path in (ROOT / name).rglob("*.py"))
    return sorted(path for path in paths if "__pycache__" not in path.parts)


def prose_of(path: Path) -> str:
    """The comments and docstrings of a Python file, one after another."""
    source = path.read_text(encoding="utf-8")
    parts = [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                parts.append(docstring)
    return "\n".join(parts)


def cited_rules(text: str) -> set[int]:
    """The rule numbers in "rule 4", "rules 1-3", "rules 4 and 6", ..."""
    numbers: set[int] = set()
    for match in RULE_REFERENCE.finditer(text):
        for item in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", match.group(1)):
            bounds = [int(bound) for bound in re.split(r"\s*[-\u2013]\s*", item)]
            numbers.update(range(bounds[0], bounds[-1] + 1))
    return numbers


def defined_rules() -> list[int]:
    return [int(number) for number in RULE_HEADING.findall(CORRECTNESS.read_text(encoding="utf-8"))]


def doc_pages() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# --- tests ----------------------------------------------------------------------------


def test_the_cited_rule_parser() -> None:
    assert cited_rules("see rule 4; rules 1-3 and rules 5 and 7, Rule 8") == {1, 2, 3, 4, 5, 7, 8}
    assert cited_rules("rules 2\u20133, rule 10") == {2, 3, 10}
    assert cited_rules("a rule, applied after a write failed") == set()


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in repo_files():
        if path.stat().st_size > FILE_BYTES_MAX:
            continue
        data = path.read_bytes()
        for needle in OUTSIDE_REFERENCES:
            if needle.encode() in data:
                found.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not found, "the design docs are in docs/, not outside the repository:\n" + "\n".join(found)


def test_rules_are_numbered_once_each_from_one() -> None:
    numbers = defined_rules()
    assert numbers, f"no '### Rule N — title' headings in {CORRECTNESS}"
    assert numbers == list(range(1, len(numbers) + 1)), f"rules must be 1..N, once each, in order: {numbers}"


@pytest.mark.parametrize("path", python_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_cited_rule_is_defined_in_docs(path: Path) -> None:
    prose = prose_of(path)
    cited = cited_rules(prose)
    if cited:
        missing = sorted(cited - set(defined_rules()))
        assert not missing, f"{path.relative_to(ROOT)} cites rules {missing}, which docs/correctness.md lacks"
        assert "docs/correctness.md" in prose, (
            f"{path.relative_to(ROOT)} cites rules {sorted(cited)} without naming docs/correctness.md"
        )
    outside = sorted(set(OUTSIDE_DOC_NAMES.findall(prose)))
    assert not outside, f"{path.relative_to(ROOT)} cites {outside}: point into docs/ instead"


@pytest.mark.parametrize("page", doc_pages(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_rule_a_doc_cites_is_defined(page: Path) -> None:
    missing = sorted(cited_rules(page.read_text(encoding="utf-8")) - set(defined_rules()))
    assert not missing, f"{page.relative_to(ROOT)} cites rules {missing}, which docs/correctness.md lacks"


@pytest.mark.parametrize("page", doc_pages(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_module_path_and_page_a_doc_names_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [f"`{name}`" for name in sorted(set(MODULE_PATH.findall(text))) if not (ROOT / name).exists()]
    for target, anchor in sorted(set(PAGE_LINK.findall(text))):
        linked = (page.parent / target).resolve()
        if not linked.exists():
            missing.append(f"link {target}")
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
            if anchor[1:] not in {slug(heading) for heading in headings}:
                missing.append(f"link {target}{anchor}")
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {', '.join(missing)}"
