"""The README's usage examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, request, monkeypatch, tmp_path):
    """Each block runs in a fresh namespace, in a temporary directory, with the environment a
    reader would have set: a master key, a key-state file, and (for blocks that say they need
    it) the address and token of a real OpenBao server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "keys.json"))
    monkeypatch.delenv("ENGINE_AUDIT_LOG", raising=False)
    block = BLOCKS[index]
    if "VAULT_ADDR" in block:
        bao = request.getfixturevalue("bao")
        monkeypatch.setenv("VAULT_ADDR", bao.address)
        monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    from engine.service import reset_encryption_service

    reset_encryption_service()
    try:
        exec(compile(block, f"README.md[python block {index}]", "exec"), {})  # noqa: S102
    finally:
        reset_encryption_service()
