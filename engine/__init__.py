"""engine: AES-256-GCM encryption for data at rest, on a native batched core.

The layers, from the bottom: ``engine._native`` (the only module that touches cffi),
``engine.aead`` and ``engine.batch`` (the public cipher and batch types).
"""

from .aead import AesGcm, backend_info, random_bytes
from .batch import Batch, SealedBatch
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

__version__ = "0.1.0"

__all__ = [
    "AesGcm",
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
