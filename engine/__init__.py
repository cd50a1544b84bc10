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

_EXPORTS = {  # name -> the module that defines it, imported on first use
    "AesGcm": "aead",
    "backend_info": "aead",
    "random_bytes": "aead",
    "Batch": "batch",
    "SealedBatch": "batch",
    "BlindIndex": "blind_index",
    "BlindIndexes": "blind_index",
    "EncryptedData": "envelope",
    "EnvelopeError": "envelope",
    "InvalidBase64": "envelope",
    "InvalidLength": "envelope",
    "MalformedEnvelope": "envelope",
    "UnknownFormat": "envelope",
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
    "XAesGcm": "xaes",
    "VaultKeyProvider": "vault",  # needs hvac (the `vault` extra)
    "VaultSecrets": "vault",
}

__version__ = "0.1.0"


def __getattr__(name: str):
    """The public names load their modules when first used: ``import engine`` (and the command
    line's ``--help``) loads neither the native library nor numpy."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
