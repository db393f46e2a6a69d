"""The documentation stands on its own: no reference to a design document outside the repository,
every ``docs/design.md §N`` citation names a section that exists, every relative markdown link
resolves, and the licence file is there.

The files checked are those git knows (tracked, plus untracked files that are not ignored), so a
document added later is checked as soon as it exists. Outside a git checkout the tests skip.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"

TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".c", ".h"}
TEXT_NAMES = {"Makefile", ".ci/run"}

# Written in pieces so that this file does not contain what it forbids.
FORBIDDEN = ("shared/" + "DESIGN", "DESIGN" + ".md", "../" + "shared")

# "docs/design.md §1.5", also wrapped across lines or a comment marker ("docs/design.md\n# §1.5").
CITATION = re.compile(r"docs/design\.md[\s#*/]*§\s*(\d+(?:\.\d+)*)")
# Inside design.md itself: "§4.1" refers to its own sections.
SELF_REF = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)

INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _git_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the file list comes from git ls-files")
    names = sorted({n for n in out.decode("utf-8", "replace").split("\0") if n})
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _text_files() -> list[Path]:
    files = []
    for path in _git_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix in TEXT_SUFFIXES or rel in TEXT_NAMES or path.name in TEXT_NAMES:
            files.append(path)
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _sections() -> set[str]:
    return set(HEADING.findall(_read(DESIGN)))


def test_no_reference_to_a_design_document_outside_the_repository():
    files = _text_files()
    assert files, "git ls-files listed no text files"
    hits = []
    for path in files:
        for lineno, line in enumerate(_read(path).splitlines(), 1):
            for word in FORBIDDEN:
                if word in line:
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {word!r}: {line.strip()[:100]}")
    assert not hits, "references to a document outside the repository (cite docs/design.md):\n" + "\n".join(hits)


def test_design_document_has_the_numbered_sections():
    assert DESIGN.is_file(), "docs/design.md is missing"
    sections = _sections()
    for top in ("1", "2", "3", "4", "5"):
        assert top in sections, f"docs/design.md has no section {top} (found {sorted(sections)})"
    assert any(s.startswith("1.") for s in sections), "docs/design.md §1 has no subsections"


def test_every_design_citation_names_an_existing_section():
    sections = _sections()
    found, bad = 0, []
    for path in _text_files():
        text = _read(path)
        refs = [(m.start(), m.group(1)) for m in CITATION.finditer(text)]
        if path == DESIGN:
            refs += [(m.start(), m.group(1)) for m in SELF_REF.finditer(text)]
        for pos, ref in refs:
            found += 1
            if ref not in sections:
                lineno = text.count("\n", 0, pos) + 1
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: §{ref}")
    assert found, "no docs/design.md citation found anywhere: is the pattern still right?"
    assert not bad, (
        f"citations of sections docs/design.md does not have (it has {sorted(sections)}):\n" + "\n".join(bad)
    )


def test_licence_file():
    licence = ROOT / "LICENSE"
    assert licence.is_file(), "LICENSE is missing"
    text = _read(licence)
    assert "MIT License" in text and "Copyright (c)" in text


def _markdown_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def test_relative_links_in_readme_docs_and_benchmarks_resolve():
    pages = _markdown_pages()
    assert ROOT / "README.md" in pages
    bad = []
    for page in pages:
        text = FENCE.sub("", _read(page))
        targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
        for target in targets:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
                continue  # a URL (http:, mailto:, ...) or an anchor in the same page
            rel = target.split("#", 1)[0].split("?", 1)[0]
            if not rel:
                continue
            resolved = (ROOT / rel.lstrip("/")) if rel.startswith("/") else (page.parent / rel)
            if not resolved.exists():
                bad.append(f"{page.relative_to(ROOT)}: ({target}) -> {resolved}")
    assert not bad, "relative links to files that do not exist:\n" + "\n".join(bad)
