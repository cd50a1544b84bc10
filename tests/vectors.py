"""The one loader of known-answer vectors, in their upstream formats.

* NIST CAVP GCM ``.rsp`` files, from the ``cryptography-vectors`` package (always available in
  the test extras): ``gcmEncryptExtIV256.rsp`` and ``gcmDecrypt256.rsp``, ``FAIL`` records kept.
* Project Wycheproof JSON, carried in ``tests/data/wycheproof/`` with its origin and licence
  (SOURCES.md, LICENSE there), so that every clone runs them.
"""

from __future__ import annotations

import json
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


WYCHEPROOF_DIR = pathlib.Path(__file__).resolve().parent / "data" / "wycheproof"


def wycheproof_aes_gcm() -> list[GcmVector]:
    """Wycheproof AES-GCM tests with 256-bit keys and 128-bit tags."""
    doc = json.loads((WYCHEPROOF_DIR / "wycheproof_aes_gcm_test.json").read_text())
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
    """Wycheproof's Cobblestone-256 decryption tests; ``ct`` is stored there
    zlib-compressed and hex-encoded."""
    import zlib

    doc = json.loads((WYCHEPROOF_DIR / "wycheproof_c2sp_chunked_encryption_aes_256_gcm_test.json").read_text())
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


@dataclass(frozen=True)
class XaesVector:
    """One XAES-256-GCM test vector, with the intermediate values the specification gives."""

    origin: str
    key: bytes
    nonce: bytes
    l: bytes
    k1: bytes
    kx: bytes
    nx: bytes
    plaintext: bytes
    aad: bytes
    sealed: bytes  # ciphertext || tag

    @property
    def id(self) -> str:
        return self.origin


def xaes() -> list[XaesVector]:
    """The two test vectors of c2sp.org/XAES-256-GCM (copied from the specification's "Test
    vectors" section: hex, and ASCII where the specification quotes text)."""
    nonce = b"ABCDEFGHIJKLMNOPQRSTUVWX"
    rows = [
        ("01" * 32, "7298caa565031eadc6ce23d23ea66378", "e531954aca063d5b8d9c47a47d4cc6f0",
         "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b", b"",
         "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"),
        ("03" * 32, "91c08762876dccf9ba204a33768fa5fe", "23810ec50edb99f374409466ed1f4b7b",
         "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
         b"c2sp.org/XAES-256-GCM", "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"),
    ]
    return [XaesVector(f"c2sp:XAES-256-GCM:{i + 1}", bytes.fromhex(k), nonce, bytes.fromhex(l),
                       bytes.fromhex(k1), bytes.fromhex(kx), bytes.fromhex("4d4e4f505152535455565758"),
                       b"XAES-256-GCM", aad, bytes.fromhex(sealed))
            for i, (k, l, k1, kx, aad, sealed) in enumerate(rows)]


# The accumulated randomized test of c2sp.org/XAES-256-GCM: the SHAKE-128 digest (32 bytes) of
# every ciphertext || tag, for this many iterations over a SHAKE-128 stream of inputs.
XAES_ACCUMULATED = {
    10_000: "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939",
    1_000_000: "2163ae1445985a30b60585ee67daa55674df06901b890593e824b8a7c885ab15",
}
