"""The code blocks of docs/column-format.md and docs/pme.md run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
BLOCKS = [(name, block) for name in ("column-format.md", "pme.md")
          for block in re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)]


def test_each_document_has_an_example():
    assert {name for name, _ in BLOCKS} == {"column-format.md", "pme.md"}


@pytest.mark.parametrize("name, block", BLOCKS, ids=[f"{n}[{i}]" for i, (n, _) in enumerate(BLOCKS)])
def test_doc_example_runs(name, block, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"docs/{name}", "exec"), {})  # noqa: S102
