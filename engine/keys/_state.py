"""Private helpers shared by the key providers: the local key-state file and the derived-key cache.

The state file holds public facts only (versions, states, creation times, salts, KDF parameters,
algorithms, usage counts, key check values), never key material. It is replaced atomically
(through :func:`engine.atomic_file.write_atomically`), so a crash
leaves either the old or the new file, and writers serialise on ``fcntl.flock`` of a sibling
``.lock`` file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..aead import AesGcm
from ..atomic_file import write_atomically
from ..locks import fork_safe_lock
from .base import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    KeyLockBusy,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    cipher_for,
)

__all__ = [
    "KeyStateCorrupted",
    "StateSnapshot",
    "VersionRecord",
    "cached_cipher",
    "default_state_path",
    "flocked",
    "key_check_value",
    "locked",
    "read_state",
    "write_state_atomic",
]

STATE_FILE_ENV = "ENGINE_KEY_STATE_FILE"
STATE_DIR_ENV = "ENGINE_STATE_DIR"
STATE_FORMAT = 1
KDF_NAME = "pbkdf2-hmac-sha512"
CHECK_BYTES = 16


class KeyStateCorrupted(KeyProviderError):
    """The key-state file exists but cannot be parsed or fails validation.

    The message names the file and what is wrong; restore it from a backup (the salts in it are
    needed to re-derive every version's key).
    """


@dataclass(frozen=True)
class VersionRecord:
    """One version as stored in the state file (no key material)."""

    version: int
    state: KeyState
    created_at: datetime
    salt: bytes = field(repr=False)
    iterations: int
    usage: int = 0
    check: bytes | None = field(default=None, repr=False)  # key check value; None in old files
    algorithm: str = DEFAULT_ALGORITHM  # absent in files older than XAES-256-GCM

    def info(self) -> KeyVersionInfo:
        return KeyVersionInfo(self.version, self.state, self.created_at, self.algorithm)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "version": self.version,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "kdf": KDF_NAME,
            "iterations": self.iterations,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "usage": self.usage,
            "algorithm": self.algorithm,
        }
        if self.check is not None:
            doc["check"] = self.check.hex()
        return doc


@dataclass(frozen=True)
class StateSnapshot:
    """The parsed state file: the current version and every version record, by version."""

    current: int | None
    versions: Mapping[int, VersionRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "current": self.current,
            "versions": [self.versions[v].to_json() for v in sorted(self.versions)],
        }


EMPTY = StateSnapshot(None, {})
_NOT_JSON = object()


def default_state_path(env: Mapping[str, str] | None = None) -> Path:
    """``$ENGINE_KEY_STATE_FILE``, else ``$ENGINE_STATE_DIR/keys.json``, else
    ``$XDG_STATE_HOME/engine/keys.json``, else ``~/.local/state/engine/keys.json``."""
    env = os.environ if env is None else env
    if env.get(STATE_FILE_ENV):
        return Path(env[STATE_FILE_ENV]).expanduser()
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser() / "keys.json"
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "engine" / "keys.json"


def _corrupt(path: Path, why: str) -> KeyStateCorrupted:
    return KeyStateCorrupted(f"key state file {str(path)!r} is corrupted: {why}")


def _parse_record(path: Path, raw: Any) -> VersionRecord:
    if not isinstance(raw, dict):
        raise _corrupt(path, "a version entry is not an object")
    try:
        version = raw["version"]
        state = KeyState(raw["state"])
        created_at = datetime.fromisoformat(raw["created_at"])
        salt = base64.b64decode(raw["salt"], validate=True)
        iterations = raw["iterations"]
        kdf = raw.get("kdf", KDF_NAME)
        usage = raw.get("usage", 0)
        check = raw.get("check")
        check = None if check is None else bytes.fromhex(check)
        algorithm = raw.get("algorithm", DEFAULT_ALGORITHM)
    except KeyError as exc:
        raise _corrupt(path, f"a version entry lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise _corrupt(path, "a version entry has an invalid state, timestamp, salt or check "
                             "value") from None
    if type(version) is not int or version < 1:
        raise _corrupt(path, "versions must be positive integers")
    if type(iterations) is not int or iterations < 1:
        raise _corrupt(path, f"version {version} has an invalid iteration count")
    if type(usage) is not int or usage < 0:
        raise _corrupt(path, f"version {version} has an invalid usage count")
    if kdf != KDF_NAME:
        raise _corrupt(path, f"version {version} uses an unknown KDF")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise _corrupt(path, f"version {version} names an unknown algorithm")
    if len(salt) < 16:
        raise _corrupt(path, f"version {version} has a salt shorter than 16 bytes")
    if check is not None and len(check) != CHECK_BYTES:
        raise _corrupt(path, f"version {version} has a key check value of the wrong size")
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=timezone.utc)
    return VersionRecord(version, state, created_at, salt, iterations, usage, check, algorithm)


def parse_state(path: Path, text: bytes) -> StateSnapshot:
    """Validates and parses the state file's bytes.

    Raises:
        KeyStateCorrupted: not JSON, an unknown format, or an invalid entry.
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = _NOT_JSON
    if doc is _NOT_JSON:
        raise _corrupt(path, "not valid JSON (truncated or overwritten?)")
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise _corrupt(path, f"expected an object with \"format\": {STATE_FORMAT}")
    entries = doc.get("versions")
    if not isinstance(entries, list):
        raise _corrupt(path, "\"versions\" must be a list")
    versions: dict[int, VersionRecord] = {}
    for raw in entries:
        rec = _parse_record(path, raw)
        if rec.version in versions:
            raise _corrupt(path, f"version {rec.version} appears twice")
        versions[rec.version] = rec
    current = doc.get("current")
    if current is not None and (type(current) is not int or current not in versions):
        raise _corrupt(path, "\"current\" does not name a listed version")
    if current is None and versions:
        raise _corrupt(path, "\"current\" is missing")
    return StateSnapshot(current, versions)


def read_state(path: Path) -> tuple[StateSnapshot, tuple[int, int, int] | None]:
    """The state file's content and its signature (inode, mtime_ns, size); empty if absent.

    Raises:
        KeyStateCorrupted: the file cannot be parsed.
        KeyProviderError: the file exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        return EMPTY, None
    except OSError as exc:
        raise _os_error("read", path, exc) from None
    return parse_state(path, text), (st.st_ino, st.st_mtime_ns, st.st_size)


def _os_error(what: str, path: Path, exc: OSError) -> KeyProviderError:
    return KeyProviderError(
        f"cannot {what} the key state file {str(path)!r}: {exc.strerror or exc} "
        f"(set ENGINE_KEY_STATE_FILE to a writable place, or fix the directory's permissions)"
    )


def signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of the file, or None when it does not exist."""
    failure = None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a path through a file, say
        failure = exc
    if failure is not None:
        raise _os_error("read", path, failure)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def write_state_atomic(path: Path, snapshot: StateSnapshot) -> None:
    """Replaces the state file atomically (mode 0600, through
    :func:`engine.atomic_file.write_atomically`): a crash leaves the old or the new file, whole.

    Raises:
        KeyProviderError: the file or its directory cannot be written.
    """
    data = json.dumps(snapshot.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
    failure = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, data, suffix=".tmp")
    except OSError as exc:
        failure = exc
    if failure is not None:  # raised outside the handler: no chained OSError in the report
        raise _os_error("write", path, failure)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``<path>.lock`` (serialises writers across processes).

    Raises:
        KeyProviderError: the lock file cannot be created (a read-only directory, say).
        KeyLockBusy: ``wait`` is False and another process holds the lock.
    """
    with flocked(Path(f"{path}.lock"), wait=True, what="lock"):
        yield


@contextlib.contextmanager
def flocked(lock_path: Path, *, wait: bool, what: str) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_path`` (created with mode 0600).

    Raises:
        KeyProviderError: the file cannot be created or opened.
        KeyLockBusy: ``wait`` is False and another process holds it.
    """
    failure = None
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        failure = exc
    if failure is not None:
        raise _os_error(what, lock_path, failure)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            busy = True
        else:
            busy = False
        if busy:
            raise KeyLockBusy(f"another process holds {str(lock_path)!r}")
        try:
            yield
        finally:
            # Unlocked explicitly: a child forked meanwhile holds a copy of the descriptor, and
            # closing ours alone would leave the lock held until the child closes its copy too.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_CACHE: dict[tuple[bytes, str], tuple[AesGcm, bytes]] = {}
_CACHE_LOCK = fork_safe_lock()


def key_check_value(key: bytes, version: int, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """A version's key check value: HMAC-SHA256(key, label || version [|| algorithm])[:16]. It
    shows whether a key derived later is the same key, and nothing about the key itself. The
    algorithm of an XAES-256-GCM version is bound in (AES-256-GCM versions keep the value they
    always had), so that a record whose algorithm was edited is refused instead of using its
    key with another algorithm."""
    label = b"engine key check v1" + version.to_bytes(4, "big")
    if algorithm != DEFAULT_ALGORITHM:
        label += b"/" + algorithm.encode("ascii")
    return hmac.new(key, label, hashlib.sha256).digest()[:CHECK_BYTES]


def cached_cipher(cache_key: bytes, version: int, derive: Callable[[], bytes],
                  algorithm: str = DEFAULT_ALGORITHM) -> tuple[AesGcm, bytes]:
    """The process-wide cipher of ``algorithm`` for ``cache_key`` and the key's check value for
    ``version``, deriving the key once per process.

    ``cache_key`` must identify the key without revealing it (a keyed hash of the inputs).
    """
    entry = _CACHE.get((cache_key, algorithm))
    if entry is None:
        with _CACHE_LOCK:
            entry = _CACHE.get((cache_key, algorithm))
            if entry is None:
                key = derive()
                entry = (cipher_for(algorithm, key), key_check_value(key, version, algorithm))
                _CACHE[(cache_key, algorithm)] = entry
    return entry


def clear_cache() -> None:
    """Forgets every derived key of this process (tests and benchmarks)."""
    with _CACHE_LOCK:
        _CACHE.clear()
