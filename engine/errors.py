"""The engine's one exception hierarchy.

Every exception the engine raises derives from :class:`EngineError`. Argument errors also derive
from :class:`ValueError` or :class:`TypeError`, so ``except ValueError`` keeps working for callers
that do not know this package. :class:`InvalidTag` carries no detail: an attacker learns nothing
from it beyond "this did not authenticate".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .batch import Batch

__all__ = [
    "ERROR_TYPES",
    "BackendUnavailable",
    "BatchInvalidTag",
    "EngineError",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidTag",
    "MessageTooLong",
    "NativeError",
]


class EngineError(Exception):
    """Base class of every error raised by the engine."""


class InvalidArgument(EngineError, ValueError):
    """An argument has the right type but an unacceptable value (length, range, shape)."""


class InvalidArgumentType(EngineError, TypeError):
    """An argument has a type the engine cannot use (for example, no buffer protocol)."""


class MessageTooLong(InvalidArgument):
    """A message exceeds GCM's limit of 2**36 - 32 bytes under one nonce (NIST SP 800-38D)."""


class BackendUnavailable(EngineError, RuntimeError):
    """The requested native backend is not built in or cannot run on this CPU."""


class NativeError(EngineError, RuntimeError):
    """The native library failed for a reason other than bad input (CSPRNG, threads, memory)."""


class InvalidTag(EngineError):
    """Authentication failed: the key, nonce, associated data, ciphertext or tag is wrong."""

    def __init__(self) -> None:
        super().__init__()

    def __str__(self) -> str:
        return "authentication failed"


class BatchInvalidTag(InvalidTag):
    """Some records of a batch failed authentication.

    Attributes:
        failed: the indices of the records that failed, ascending (a numpy ``int64`` array).
        result: the opened batch; the records listed in ``failed`` are zero-filled, the others
            hold their plaintext.
    """

    def __init__(self, failed: np.ndarray, result: Batch | None) -> None:
        super().__init__()
        self.failed = failed
        self.result = result

    def __str__(self) -> str:
        return f"authentication failed for {len(self.failed)} record(s)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failed, None))


#: The kinds of ``engine_encryption_errors_total{error_type}``; anything else counts as ``other``.
ERROR_TYPES = (
    "invalid_tag",  # authentication failed: wrong key or AAD, or tampered
    "unknown_key_version",  # the value names a version the provider does not hold
    "malformed",  # not a token, JSON envelope or engine file
    "invalid_argument",  # a value of the wrong type or shape from the caller
    "key_version_not_usable",  # the current version may not encrypt (decrypt-only, deprecated)
    "key_usage_exhausted",  # the current version has done 2**32 encryptions
    "key_provider",  # the provider failed (Vault unreachable, master key changed, ...)
    "key_rotation_failed",  # a rotation failed and was rolled back
    "other",  # any other engine error
)
