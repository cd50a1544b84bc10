"""engine: AES-256-GCM encryption for data at rest, on a native batched core.

The layers, from the bottom: ``engine._native`` (the only module that touches cffi),
``engine.aead`` and ``engine.batch`` (cipher and batch types, with ``buffers``/``codecs``/
``records`` beneath them), ``engine.envelope`` (ciphertext formats), ``engine.keys`` and
``engine.vault`` (key providers), ``engine.rotation``/``audit``/``metrics``/``tls``,
``engine.service``/``engine.fields``/``engine.tables`` (the application-facing API), and the jobs
over data above them (``engine.stream``).
"""

# First: while `crypto-engine` starts, Ctrl-C ends it cleanly (for a library user, nothing).
from . import _interrupts  # noqa: F401
from .aead import AesGcm, backend_info, random_bytes
from .batch import Batch, SealedBatch
from .blind_index import BlindIndex, BlindIndexes
from .envelope import (
    EncryptedData,
    EnvelopeError,
    InvalidBase64,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
)
from .errors import (
    BackendUnavailable,
    BatchInvalidTag,
    EngineError,
    InvalidArgument,
    InvalidArgumentType,
    InvalidTag,
    MessageTooLong,
    NativeError,
)
from .fields import FieldEncryption
from .keys import (
    EnvironmentKeyProvider,
    KeyState,
    KeyVersionNotUsable,
    StaticKeyProvider,
    UnknownKeyVersion,
)
from .rotation import (
    KeyRotationService,
    RotationFailed,
    RotationPolicy,
    RotationResult,
    get_key_rotation_service,
)
from .service import (
    EncryptionService,
    ServiceConfigurationError,
    get_encryption_service,
    reset_encryption_service,
)
from .xaes import XAesGcm

__version__ = "0.1.0"

_LAZY = {"VaultKeyProvider": "vault", "VaultSecrets": "vault"}  # need hvac (`vault` extra)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AesGcm",
    "BlindIndex",
    "BlindIndexes",
    "EncryptedData",
    "EncryptionService",
    "EnvelopeError",
    "EnvironmentKeyProvider",
    "FieldEncryption",
    "InvalidBase64",
    "InvalidLength",
    "KeyRotationService",
    "KeyState",
    "KeyVersionNotUsable",
    "MalformedEnvelope",
    "RotationFailed",
    "RotationPolicy",
    "RotationResult",
    "ServiceConfigurationError",
    "StaticKeyProvider",
    "UnknownFormat",
    "UnknownKeyVersion",
    "VaultKeyProvider",
    "VaultSecrets",
    "XAesGcm",
    "get_encryption_service",
    "get_key_rotation_service",
    "reset_encryption_service",
    "BackendUnavailable",
    "Batch",
    "BatchInvalidTag",
    "EngineError",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidTag",
    "MessageTooLong",
    "NativeError",
    "SealedBatch",
    "backend_info",
    "random_bytes",
]
