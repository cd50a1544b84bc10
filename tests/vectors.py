"""The one loader of known-answer vectors, in their upstream formats.

* NIST CAVP GCM ``.rsp`` files, from the ``cryptography-vectors`` package (always available in
  the test extras): ``gcmEncryptExtIV256.rsp`` and ``gcmDecrypt256.rsp``, ``FAIL`` records kept.
* Project Wycheproof JSON, read from ``../shared/vectors`` beside the checkout when that folder
  exists (see its SOURCES.md); never copied into this repository.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass


@dataclass(frozen=True)
class GcmVector:
    origin: str
    key: bytes
    iv: bytes
    plaintext: bytes
    aad: bytes
    ciphertext: bytes
    tag: bytes
    valid: bool

    @property
    def id(self) -> str:
        return self.origin


def _cavp_dir() -> pathlib.Path:
    import cryptography_vectors

    return pathlib.Path(cryptography_vectors.__file__).parent / "ciphers" / "AES" / "GCM"


def cavp(name: str) -> list[GcmVector]:
    """Records of one CAVP GCM file (AES-256, 128-bit tags only: the engine's only format)."""
    out: list[GcmVector] = []
    params: dict[str, str] = {}
    record: dict[str, str] = {}

    def flush() -> None:
        if "Key" in record and params.get("Taglen") == "128":
            out.append(
                GcmVector(
                    origin=f"{name}:IVlen={params['IVlen']}:PTlen={params['PTlen']}:"
                    f"AADlen={params['AADlen']}:Count={record['Count']}",
                    key=bytes.fromhex(record["Key"]),
                    iv=bytes.fromhex(record["IV"]),
                    plaintext=bytes.fromhex(record.get("PT", "")),
                    aad=bytes.fromhex(record.get("AAD", "")),
                    ciphertext=bytes.fromhex(record.get("CT", "")),
                    tag=bytes.fromhex(record["Tag"]),
                    valid="FAIL" not in record,
                )
            )
        record.clear()

    for line in (_cavp_dir() / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            flush()
            k, _, v = line.strip("[]").partition("=")
            params[k.strip()] = v.strip()
        elif line == "FAIL":
            record["FAIL"] = "1"
        else:
            k, _, v = line.partition("=")
            k = k.strip()
            if k == "Count":
                flush()
            record[k] = v.strip()
    flush()
    return out


SHARED_VECTORS = pathlib.Path(
    os.environ.get("ENGINE_SHARED_VECTORS", pathlib.Path(__file__).resolve().parents[2] / "shared" / "vectors")
)


def wycheproof_aes_gcm() -> list[GcmVector]:
    """Wycheproof AES-GCM tests with 256-bit keys and 128-bit tags ([] when absent)."""
    path = SHARED_VECTORS / "wycheproof_aes_gcm_test.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    out = []
    for group in doc["testGroups"]:
        if group["keySize"] != 256 or group["tagSize"] != 128:
            continue
        for t in group["tests"]:
            out.append(
                GcmVector(
                    origin=f"wycheproof:tcId={t['tcId']}",
                    key=bytes.fromhex(t["key"]),
                    iv=bytes.fromhex(t["iv"]),
                    plaintext=bytes.fromhex(t["msg"]),
                    aad=bytes.fromhex(t["aad"]),
                    ciphertext=bytes.fromhex(t["ct"]),
                    tag=bytes.fromhex(t["tag"]),
                    valid=t["result"] != "invalid",
                )
            )
    return out


@dataclass(frozen=True)
class ChunkedVector:
    """One Wycheproof Cobblestone-256 test (c2sp.org/chunked-encryption)."""

    tc_id: int
    comment: str
    key: bytes
    context: bytes
    ciphertext: bytes
    aead_key: bytes | None
    base_nonce: bytes | None
    msg_length: int | None
    msg_sha512: bytes | None
    valid: bool
    flags: frozenset

    @property
    def id(self) -> str:
        return f"tcId={self.tc_id}"


def wycheproof_chunked() -> list[ChunkedVector]:
    """Wycheproof's Cobblestone-256 decryption tests ([] when absent); ``ct`` is stored there
    zlib-compressed and hex-encoded."""
    import zlib

    path = SHARED_VECTORS / "wycheproof_c2sp_chunked_encryption_aes_256_gcm_test.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    out = []
    for group in doc["testGroups"]:
        assert group["aead"] == "AEAD_AES_256_GCM" and group["sha"] == "SHA-512"
        for t in group["tests"]:
            out.append(ChunkedVector(
                tc_id=t["tcId"], comment=t["comment"], key=bytes.fromhex(t["key"]),
                context=bytes.fromhex(t["ctx"]), ciphertext=zlib.decompress(bytes.fromhex(t["ct"])),
                aead_key=bytes.fromhex(t["aeadKey"]) if "aeadKey" in t else None,
                base_nonce=bytes.fromhex(t["baseNonce"]) if "baseNonce" in t else None,
                msg_length=t.get("msgLength"),
                msg_sha512=bytes.fromhex(t["msgSha512"]) if "msgSha512" in t else None,
                valid=t["result"] == "valid", flags=frozenset(t["flags"])))
    return out
