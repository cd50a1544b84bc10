"""Errors of the column format (all :class:`engine.EnvelopeError`, a ``ValueError``: a stored
value that cannot be read is a format error, whatever carried it)."""

from __future__ import annotations

from ..formats.wire import EnvelopeError

__all__ = ["ColumnTypeMismatch", "MalformedColumnValue", "UnknownColumnFormat", "UnknownColumnType"]


class MalformedColumnValue(EnvelopeError):
    """A value is not in the column format: too short, a bad key version or descriptor length,
    or a plaintext that does not decode as its recorded type (the message names no content)."""


class UnknownColumnFormat(EnvelopeError):
    """A value's format byte names no column format this engine reads."""


class UnknownColumnType(EnvelopeError):
    """A value's type cannot be restored: its descriptor names a type this process does not
    have (an extension type that is not registered), or a value refers to a descriptor that
    neither the column nor the caller supplied."""


class ColumnTypeMismatch(EnvelopeError):
    """The values of one column record different types, or not the type the caller expects."""
