"""The atomic certificate/key pair layout (POSIX)."""
from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import shutil
from pathlib import Path

from ..atomic_file import fsync_directory, replace_symlink, write_atomically


def _utcnow(now: _dt.datetime | None = None) -> _dt.datetime:
    if now is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc)


def _pair_names(cert_path: Path) -> tuple[Path, str]:
    stem = cert_path.name[:-4] if cert_path.name.endswith(".pem") else cert_path.name
    return cert_path.parent / f"..{stem}.data", f"..{stem}.v-"


def _install_pair(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes, tag: str) -> None:
    """Atomically make ``cert_path``/``key_path`` point to a new pair.

    Every intermediate state on disk is either the old pair or the new pair.
    """
    directory = cert_path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_link, prefix = _pair_names(cert_path)

    def new_version(vtag: str, cpem: bytes, kpem: bytes) -> str:
        vdir = directory / f"{prefix}{vtag}"
        vdir.mkdir(mode=0o700, exist_ok=True)
        write_atomically(vdir / "key.pem", kpem)
        write_atomically(vdir / "cert.pem", cpem, mode=0o644)
        fsync_directory(vdir)
        return vdir.name

    cert_target = f"{data_link.name}/cert.pem"
    key_target = os.path.relpath(data_link / "key.pem", key_path.parent)
    managed = (cert_path.is_symlink() and os.readlink(cert_path) == cert_target
               and key_path.is_symlink() and os.readlink(key_path) == key_target
               and data_link.is_symlink())
    current = None
    if not managed:
        if cert_path.is_file() and key_path.is_file():
            # Convert plain files: snapshot the *old* pair first, so the switch
            # to symlinks does not change content.
            old = new_version("old-" + secrets.token_hex(4), cert_path.read_bytes(), key_path.read_bytes())
            replace_symlink(old, data_link)
        else:  # fresh issue: only a missing file is possible, never a mismatch
            current = new_version(tag, cert_pem, key_pem)
            replace_symlink(current, data_link)
        replace_symlink(cert_target, cert_path)
        replace_symlink(key_target, key_path)
    if current is None:
        current = new_version(tag, cert_pem, key_pem)
        replace_symlink(current, data_link)  # the single commit point
    for stale in directory.glob(prefix + "*"):
        if stale.name != current and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "cert"
