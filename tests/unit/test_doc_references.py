"""Docs that cannot rot silently: every repository path and every document that the docs and
the configuration files' comments name exists (or is a build output that .gitignore
declares and a make target or command produces)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

from tests.support.paths import REPO

TOP = ("serving", "handlers", "protos", "model_store", "training", "k8s", "tests", ".ci")
# A path: one of the fixed top-level folders, then path characters; or a bare *.md name.
_TOP = "|".join(re.escape(t) for t in TOP)
PATH = re.compile(r"(?<![\w./-])((?:" + _TOP + r")/[\w./$<>{}*-]*[\w/])")
DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z_]*\.md)\b")
PLACEHOLDER = re.compile(r"\bNN\b|\bN\b|<|\*|\{|\$")


def tracked() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()


def documents() -> list[Path]:
    """The tracked docs (*.md) and configuration files whose comments name paths."""
    suffixes = (".md", ".yaml", ".yml", ".properties", ".toml", ".txt")
    names = [REPO / t for t in tracked() if t.endswith(suffixes) or Path(t).name == "Makefile"]
    data = ("datasets/photos", "tests/data")  # photos and fuzz inputs; their READMEs are read
    return [p for p in names if p.suffix == ".md" or not any(d in str(p) for d in data)]


def prose(doc: Path) -> str:
    """What ``doc`` says in words: a Markdown file whole, a configuration file's comments."""
    text = doc.read_text(errors="replace")
    if doc.suffix == ".md":
        return text
    return "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)


def ignored(path: str) -> bool:
    """True when .gitignore declares ``path`` a build output (it need not be committed)."""
    patterns = [
        line.strip() for line in (REPO / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for pattern in patterns:
        anchored = pattern.strip("/")
        if fnmatch.fnmatch(path, anchored) or path.startswith(anchored.rstrip("*") + "/"):
            return True
        if fnmatch.fnmatch(Path(path).name, anchored):
            return True
    return False


def missing_references() -> list[str]:
    found = []
    basenames = {Path(t).name for t in tracked()}
    for doc in documents():
        text = prose(doc)
        for name in PATH.findall(text):
            name = name.rstrip("./")
            if PLACEHOLDER.search(name) or ignored(name):
                continue
            if not (REPO / name).exists():
                found.append(f"{doc.name}: {name}")
        for name in DOC.findall(text):
            if name not in basenames and not ignored(name):
                found.append(f"{doc.name}: {name}")
    return sorted(set(found))


def test_every_path_and_document_the_docs_name_exists():
    assert missing_references() == []


def test_the_check_finds_a_path_and_a_document_that_are_not_there(tmp_path, monkeypatch):
    doc = tmp_path / "NOTES.md"
    doc.write_text("See serving/runtime/nowhere.py, serving/runtime/pipeline.py and NOPE.md.")
    config = tmp_path / "x.yaml"
    config.write_text("key: serving/value-not-a-comment.py  # but k8s/gone.yaml is\n")
    monkeypatch.setattr("tests.unit.test_doc_references.documents", lambda: [doc, config])
    found = {line.split(": ", 1)[1] for line in missing_references()}
    assert found == {"serving/runtime/nowhere.py", "NOPE.md", "k8s/gone.yaml"}
