"""The errors of chunked encryption, in the engine's hierarchy.

Every failure to authenticate a message derives from :class:`engine.InvalidTag` (so ``except
InvalidTag`` catches them all); each says which check failed and never anything about the key
or the plaintext.
"""

from __future__ import annotations

from typing import Any

from ..errors import EngineError, InvalidTag

__all__ = [
    "ChunkInvalid",
    "CommitmentMismatch",
    "MessageInvalid",
    "NotAnEngineFile",
    "StreamError",
    "TruncatedMessage",
]


class StreamError(EngineError):
    """Base class of the errors raised by :mod:`engine.stream` (besides argument errors)."""


class NotAnEngineFile(StreamError, ValueError):
    """The input does not start with the engine file header (or names an unknown format)."""


class MessageInvalid(StreamError, InvalidTag):
    """A chunked message did not authenticate; subclasses say which check failed."""

    reason = "the message did not authenticate"

    def __str__(self) -> str:
        return self.reason


class CommitmentMismatch(MessageInvalid):
    """The key commitment does not match: wrong key or context, or a modified header. Found
    before any chunk is decrypted."""

    reason = "wrong key or context (the key commitment does not match)"


class TruncatedMessage(MessageInvalid):
    """The message ends too early: inside the header, or without its short final chunk."""

    reason = "the message is truncated (its header or its short final chunk is missing)"


class ChunkInvalid(MessageInvalid):
    """Chunk ``index`` (from 0) failed authentication: modified, reordered, duplicated, or
    followed by trailing data."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def __str__(self) -> str:
        return (f"chunk {self.index} failed authentication "
                "(modified, reordered, duplicated, or trailing data)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index,))
