"""engine: AES-256-GCM encryption for data at rest, on a native batched core.

The layers, from the bottom: ``engine._native`` (the only module that touches cffi),
``engine.aead`` and ``engine.batch`` (cipher and batch types, with ``buffers``/``codecs``/
``records`` beneath them), ``engine.formats`` (ciphertext formats), ``engine.keys`` and
``engine.vault`` (key providers), ``engine.rotation``/``audit``/``metrics``/``tls``,
``engine.service``/``engine.fields``/``engine.tables`` (the application-facing API), and the jobs
over data above them (``engine.stream``). Calls that take raw keys and nonces are in
``engine.hazmat``.

``import engine`` loads none of them: each name below is imported from its module on first use
(numpy comes with the first cipher or service; pyarrow and pandas only with a call given or
asked for their data), so a program that imports the engine and exits early pays for nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# First: while `crypto-engine` starts, Ctrl-C ends it cleanly (for a library user, nothing).
from . import _interrupts  # noqa: F401

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the table below imports them
    from .aead import AesGcm, backend_info, random_bytes
    from .batch import Batch, SealedBatch
    from .blind_index import BlindIndex, BlindIndexes
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
    from .formats.envelope import EncryptedData
    from .formats.wire import (
        EnvelopeError,
        InvalidBase64,
        InvalidLength,
        MalformedEnvelope,
        UnknownFormat,
    )
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
    from .vault import VaultKeyProvider, VaultSecrets
    from .xaes import XAesGcm

_EXPORTS = {  # name -> the module that defines it
    "AesGcm": "aead",
    "backend_info": "aead",
    "random_bytes": "aead",
    "Batch": "batch",
    "SealedBatch": "batch",
    "BlindIndex": "blind_index",
    "BlindIndexes": "blind_index",
    "EncryptedData": "formats.envelope",
    "EnvelopeError": "formats.wire",
    "InvalidBase64": "formats.wire",
    "InvalidLength": "formats.wire",
    "MalformedEnvelope": "formats.wire",
    "UnknownFormat": "formats.wire",
    "BackendUnavailable": "errors",
    "BatchInvalidTag": "errors",
    "EngineError": "errors",
    "InvalidArgument": "errors",
    "InvalidArgumentType": "errors",
    "InvalidTag": "errors",
    "MessageTooLong": "errors",
    "NativeError": "errors",
    "FieldEncryption": "fields",
    "EnvironmentKeyProvider": "keys",
    "KeyState": "keys",
    "KeyVersionNotUsable": "keys",
    "StaticKeyProvider": "keys",
    "UnknownKeyVersion": "keys",
    "KeyRotationService": "rotation",
    "RotationFailed": "rotation",
    "RotationPolicy": "rotation",
    "RotationResult": "rotation",
    "get_key_rotation_service": "rotation",
    "EncryptionService": "service",
    "ServiceConfigurationError": "service",
    "get_encryption_service": "service",
    "reset_encryption_service": "service",
    "VaultKeyProvider": "vault",
    "VaultSecrets": "vault",
    "XAesGcm": "xaes",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f".{name}", __name__)  # engine.stream, engine.tls ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AesGcm",
    "BackendUnavailable",
    "Batch",
    "BatchInvalidTag",
    "BlindIndex",
    "BlindIndexes",
    "EncryptedData",
    "EncryptionService",
    "EngineError",
    "EnvelopeError",
    "EnvironmentKeyProvider",
    "FieldEncryption",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidBase64",
    "InvalidLength",
    "InvalidTag",
    "KeyRotationService",
    "KeyState",
    "KeyVersionNotUsable",
    "MalformedEnvelope",
    "MessageTooLong",
    "NativeError",
    "RotationFailed",
    "RotationPolicy",
    "RotationResult",
    "SealedBatch",
    "ServiceConfigurationError",
    "StaticKeyProvider",
    "UnknownFormat",
    "UnknownKeyVersion",
    "VaultKeyProvider",
    "VaultSecrets",
    "XAesGcm",
    "backend_info",
    "get_encryption_service",
    "get_key_rotation_service",
    "random_bytes",
    "reset_encryption_service",
]
