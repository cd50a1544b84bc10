"""Exception hierarchy of :mod:`engine.tls` (messages never contain key material or passphrases)."""
from __future__ import annotations

from ..errors import EngineError


class TLSError(EngineError):
    """Base class of every error raised by :mod:`engine.tls`."""


class CertificateError(TLSError, ValueError):
    """Corrupt/unreadable PEM, a key that does not match its certificate, or a
    certificate this CA did not issue."""


class PassphraseError(TLSError, ValueError):
    """The CA private key could not be decrypted with the given passphrase."""


class RevocationError(TLSError, ValueError):
    """Revocation of a serial number this CA never issued."""
