"""Interop with a Node.js ``crypto`` AES-256-GCM peer (tests/node/interop.js) through the JSON
envelope."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from engine import InvalidTag
from engine.formats.envelope import EncryptedData
from engine.keys import StaticKeyProvider
from engine.service import EncryptionService

NODE = shutil.which("node")
SCRIPT = Path(__file__).parent / "node" / "interop.js"
KEY = bytes(range(32))  # a known key, shared with the Node side
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

PLAINTEXTS = ["sensitive data", "", "ünïcode ✓ 日本", "x" * 5000]


def node(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(SCRIPT), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def svc() -> EncryptionService:
    return EncryptionService(StaticKeyProvider({4: KEY}))


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
@pytest.mark.parametrize("aad", [None, "user:123"])
def test_node_encrypts_engine_decrypts(svc, plaintext, aad):
    args = ["encrypt", KEY.hex(), "4"] + ([aad] if aad else [])
    out = node(*args, stdin=base64.b64encode(plaintext.encode()).decode())
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"iv", "ciphertext", "authTag", "keyVersion", "timestamp", "algorithm"}
    e = EncryptedData.from_json(out.stdout)
    assert e.key_version == 4 and e.timestamp.tzinfo is not None
    assert svc.decrypt_text(out.stdout, aad=aad) == plaintext
    assert svc.decrypt_text(doc, aad=aad) == plaintext
    assert svc.decrypt_text(e.to_token(), aad=aad) == plaintext  # stored compactly (format 2)
    with pytest.raises(InvalidTag):
        svc.decrypt(doc, aad="other")


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
@pytest.mark.parametrize("aad", [None, "user:123"])
def test_engine_encrypts_node_decrypts(svc, plaintext, aad):
    payload = svc.encrypt(plaintext, aad=aad).to_json()
    out = node("decrypt", KEY.hex(), *([aad] if aad else []), stdin=payload)
    assert out.returncode == 0, out.stderr
    assert base64.b64decode(out.stdout).decode() == plaintext


def test_node_detects_tampering_of_engine_output(svc):
    doc = svc.encrypt("payload").to_dict()
    tag = bytearray(base64.b64decode(doc["authTag"]))
    tag[0] ^= 1
    doc["authTag"] = base64.b64encode(bytes(tag)).decode()
    out = node("decrypt", KEY.hex(), stdin=json.dumps(doc))
    assert out.returncode == 2
