"""The code of the README and of every document under docs/ runs as written.

Every ```python block runs; a block that only shows a shape (it needs a production cluster or a
fixed port) is fenced ```py instead and is read, not run."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(doc.relative_to(ROOT).as_posix(), i, block) for doc in DOCUMENTS
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S))]


def test_the_readme_and_the_column_documents_have_examples():
    counts = {name: 0 for name in ("README.md", "docs/column-format.md", "docs/pme.md")}
    for name, _, _ in BLOCKS:
        counts[name] = counts.get(name, 0) + 1
    assert counts["README.md"] >= 3 and counts["docs/column-format.md"] >= 1 and counts["docs/pme.md"] >= 1


@pytest.mark.parametrize("name, index, block", BLOCKS, ids=[f"{n}[{i}]" for n, i, _ in BLOCKS])
def test_example_runs(name, index, block, request, monkeypatch, tmp_path):
    """Each block runs in a fresh namespace, in a temporary directory, with the environment a
    reader would have set: a master key, a key-state file, and (for blocks that say they need
    it) the address and token of a real OpenBao server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "keys.json"))
    monkeypatch.delenv("ENGINE_AUDIT_LOG", raising=False)
    if "VAULT_ADDR" in block:
        bao = request.getfixturevalue("bao")
        monkeypatch.setenv("VAULT_ADDR", bao.address)
        monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    from engine.service import reset_encryption_service

    reset_encryption_service()
    try:
        exec(compile(block, f"{name}[python block {index}]", "exec"), {})  # noqa: S102
    finally:
        reset_encryption_service()
