"""The installed wheel at work, run by .ci/wheel-check inside its mount namespace (docs/packaging.md).

    ENGINE_BACKEND=ipsec-mb python wheel_run.py PRIVATE_DIR

Every libIPSec_MB*, libcrypto*, libssl* of the system is an empty file there; the interpreter's own
ssl and hashlib modules run on a copy of OpenSSL renamed into PRIVATE_DIR (libcrypto-python.so.3),
as on a machine where Python brings its OpenSSL and Debian's libssl3 is absent. In one process:
Python's ssl (an mTLS handshake), hashlib, cryptography (its own OpenSSL) and the engine (the
wheel's copies, both backends), with the interpreter's libcrypto put in the global scope first,
where a grafted libcrypto's symbols would bind to it. It runs from a fresh virtual environment
outside the checkout, so `import engine` is the wheel. The known-answer files (NIST CAVP,
Wycheproof) run beside it through the suite's own tests/test_kat.py. Every check prints one line;
the first that fails exits 1.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import threading

BACKENDS = ("ipsec-mb", "openssl")
OPENSSL_OR_IPSECMB = re.compile(r"/lib(IPSec_MB|crypto|ssl)[^/]*\.so")
# NIST SP 800-38D test case 16 (McGrew and Viega, "The Galois/Counter Mode of Operation", 2005):
# AES-256, 96-bit IV, 60-byte plaintext, 20-byte AAD.
GCM_KEY = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
GCM_IV = bytes.fromhex("cafebabefacedbaddecaf888")
GCM_AAD = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_PT = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_CT_TAG = bytes.fromhex(
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    "76fc6ece0f4e1768cddf8853bb2d551b"
)


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def mapped_files() -> set[str]:
    """Every file mapped into this process."""
    with open("/proc/self/maps") as maps:
        return {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}


def engine_from_the_wheel():
    import engine

    here = pathlib.Path(engine.__file__).resolve()
    check(here.is_relative_to(pathlib.Path(sys.prefix).resolve()), f"engine is imported from the venv ({here.parent})")
    engine.backend_info()  # `import engine` is lazy: the first call loads the native modules
    native = [f for f in mapped_files() if "/engine/_native/" in f]
    check(bool(native) and all(pathlib.Path(f).is_relative_to(sys.prefix) for f in native),
          f"the native modules mapped are the wheel's: {sorted(pathlib.Path(f).name for f in native)}")
    return engine


def known_answer(engine, backend: str) -> None:
    aead = engine.AesGcm(GCM_KEY, backend=backend)
    check(aead.backend == backend and aead.encrypt(GCM_IV, GCM_PT, GCM_AAD) == GCM_CT_TAG,
          f"{backend}: GCM test case 16 (AES-256) gives the known answer")
    check(aead.decrypt(GCM_IV, GCM_CT_TAG, GCM_AAD) == GCM_PT, f"{backend}: and opens it")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = pathlib.Path(sys.executable).with_name("crypto-engine")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)


def cli_round_trip(work: pathlib.Path) -> None:
    """`crypto-engine info`, then a file sealed by one backend and opened by both, and tampered."""
    env = dict(os.environ, ENCRYPTION_MASTER_KEY="wheel-check master key, not a secret: " + "k" * 16,
               ENGINE_KEY_STATE_FILE=str(work / "keys.json"))
    for backend in BACKENDS:
        info = cli("info", "--json", env=dict(env, ENGINE_BACKEND=backend))
        check(info.returncode == 0 and json.loads(info.stdout)["backend"] == backend,
              f"crypto-engine info on {backend}: {info.stdout.strip() or info.stderr.strip()}")
        check(sorted(json.loads(info.stdout)["available"]) == sorted(BACKENDS), "  both backends available")
    plain = work / "plain.bin"
    plain.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks and a short last one
    sealer = os.environ["ENGINE_BACKEND"]
    done = cli("encrypt", str(plain), str(work / "sealed"), "--json", env=env)
    check(done.returncode == 0, f"crypto-engine encrypt on {sealer} (exit {done.returncode}) {done.stderr.strip()}")
    for backend in BACKENDS:
        out = work / f"opened-{backend}"
        done = cli("decrypt", str(work / "sealed"), str(out), env=dict(env, ENGINE_BACKEND=backend))
        check(done.returncode == 0 and out.read_bytes() == plain.read_bytes(),
              f"crypto-engine decrypt on {backend} gives the file back (exit {done.returncode})")
    sealed = bytearray((work / "sealed").read_bytes())
    sealed[len(sealed) // 2] ^= 1
    (work / "tampered").write_bytes(sealed)
    done = cli("decrypt", str(work / "tampered"), str(work / "nothing"), env=env)
    check(done.returncode == 1 and not (work / "nothing").exists(),
          f"a flipped bit: exit {done.returncode}, no output file")


def read_exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := conn.recv(n - len(data))):
        data += chunk
    return data


def tls_exchange(engine, work: pathlib.Path, message: bytes) -> bytes:
    """An mTLS connection on loopback (certificates from engine.tls, that is cryptography; the
    handshake by Python's ssl): the client sends a message sealed by the engine, the server opens
    it with cryptography's AESGCM and sends the plaintext back; returns what came back."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from engine import tls

    key = engine.AesGcm.generate_key()
    ca = tls.CertificateAuthority.create(work / "ca", "wheel-check passphrase")
    server_cert, server_key = ca.issue("localhost", ip_addresses=["127.0.0.1"])
    client_cert, client_key = ca.issue("wheel-check client")
    server = tls.server_context(server_cert, server_key, ca.cert_path)
    client = tls.client_context(client_cert, client_key, ca.cert_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as s:
                sealed = read_exactly(s, int.from_bytes(read_exactly(s, 4), "big"))
                s.sendall(AESGCM(key).decrypt(sealed[:12], sealed[12:], b"tls"))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        nonce = os.urandom(12)
        sealed = nonce + engine.AesGcm(key).encrypt(nonce, message, b"tls")
        with socket.create_connection(listener.getsockname(), timeout=60) as raw:
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                check(s.version() == "TLSv1.3", f"mTLS handshake by Python's ssl: {s.version()} {s.cipher()[0]}")
                s.sendall(len(sealed).to_bytes(4, "big") + sealed)
                return read_exactly(s, len(message))


def main(private: pathlib.Path) -> None:
    import ssl

    interpreters = sorted(f for f in mapped_files() if OPENSSL_OR_IPSECMB.search(f))
    check(all(pathlib.Path(f).parent == private for f in interpreters),
          f"Python's ssl runs on its own OpenSSL: {ssl.OPENSSL_VERSION}, {interpreters or 'linked in'}")
    # What an interpreter that links libcrypto, or a host application, does: a libcrypto in the
    # scope every later library's symbols are looked up in first.
    ctypes.CDLL(str(private / "libcrypto-python.so.3"), mode=ctypes.RTLD_GLOBAL)
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    check(hashlib.pbkdf2_hmac.__module__ == "_hashlib", "hashlib's PBKDF2 runs on it")
    for soname in ("libcrypto.so.3", "libssl.so.3", "libIPSec_MB.so.1"):
        try:
            ctypes.CDLL(soname)
        except OSError as exc:
            check(True, f"the system's {soname} cannot be loaded ({exc})")
        else:
            check(False, f"the system's {soname} cannot be loaded (it loaded)")

    engine = engine_from_the_wheel()
    backend = os.environ["ENGINE_BACKEND"]
    info = engine.backend_info()
    check(info["backend"] == backend and sorted(info["available"]) == sorted(BACKENDS),
          f"backend_info: {info['backend']} {info['version']} ({info['isa']}), available {info['available']}")
    for name in BACKENDS:
        known_answer(engine, name)
        key = os.urandom(32)
        ours, theirs = engine.AesGcm(key, backend=name), AESGCM(key)
        for size in (0, 1, 16, 17, 4096, 1 << 20):
            nonce, data, aad = os.urandom(12), os.urandom(size), os.urandom(size % 29)
            ok = theirs.decrypt(nonce, ours.encrypt(nonce, data, aad), aad) == data
            ok = ok and ours.decrypt(nonce, theirs.encrypt(nonce, data, aad), aad) == data
            check(ok, f"{name} and cryptography open each other's {size}-byte messages")
    with tempfile.TemporaryDirectory() as work:
        message = os.urandom(100_000)
        check(tls_exchange(engine, pathlib.Path(work), message) == message,
              "an engine-sealed message crossed mTLS and cryptography opened it")
        cli_round_trip(pathlib.Path(work))
    foreign = sorted(f for f in mapped_files() if OPENSSL_OR_IPSECMB.search(f) and pathlib.Path(f).parent != private)
    check(not foreign, f"no libIPSec_MB, libcrypto or libssl is mapped but the interpreter's copies {foreign or ''}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or "ENGINE_BACKEND" not in os.environ:
        sys.exit(__doc__)
    main(pathlib.Path(sys.argv[1]))
