"""What a job works on: the columns, how each stores its values, and the AAD each was sealed
with. Everything here is a small frozen dataclass that pickles (it is sent to workers)."""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..batch import Batch
from ..blind_index import IndexDefinition, definitions
from ..errors import InvalidArgument
from ..fields import context_aad
from .errors import ColumnNotFound

__all__ = ["AadRule", "Column", "SealedLayout", "as_columns", "column_of", "row_fields"]


@dataclass(frozen=True)
class AadRule:
    """The AAD each value of a column was sealed with, the same rule as the application's.

    Build one with :meth:`none`, :meth:`constant`, :meth:`template` or :meth:`field_context`,
    or from the command line's text with :meth:`parse`.
    """

    kind: str = "none"
    text: str = ""
    fields: tuple[str, ...] = ()
    literals: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> "AadRule":
        """No AAD."""
        return cls("none")

    @classmethod
    def constant(cls, value: str) -> "AadRule":
        """The same AAD for every value (UTF-8)."""
        if not isinstance(value, str):
            raise InvalidArgument("a constant AAD is given as text")
        return cls("constant", value)

    @classmethod
    def template(cls, template: str) -> "AadRule":
        """A text made from other columns of the row, as ``str.format`` makes it:
        ``"users:{id}:ssn"``. Columns must hold integers or text.

        Raises:
            InvalidArgument: a template without a field, with a format spec or conversion, or
                that ``str.format`` could not read.
        """
        try:
            parsed = list(string.Formatter().parse(template))
        except (ValueError, TypeError):
            raise InvalidArgument(f"cannot read the AAD template {template!r}") from None
        literals, fields = [], []
        for literal, name, spec, conversion in parsed:
            literals.append(literal)
            if name is None:
                continue
            if not name or spec or conversion or not name.isidentifier():
                raise InvalidArgument(
                    f"AAD template {template!r}: fields are plain column names, like {{id}}")
            fields.append(name)
        if not fields:
            raise InvalidArgument(f"AAD template {template!r} names no column; use a constant")
        if len(literals) == len(fields):
            literals.append("")
        return cls("template", template, tuple(fields), tuple(literals))

    @classmethod
    def field_context(cls, id_column: str = "id", field_name: str | None = None) -> "AadRule":
        """The AAD of ``FieldEncryption(bind_context=True)``: the record id (from
        ``id_column``) and the field name (default: the column's own name)."""
        return cls("field-context", field_name or "", (id_column,))

    @classmethod
    def parse(cls, text: str) -> "AadRule":
        """A rule from ``none``, ``constant:TEXT``, ``template:TEXT`` or
        ``field-context[:ID_COLUMN]``.

        Raises:
            InvalidArgument: anything else.
        """
        kind, _, rest = text.partition(":")
        if kind == "none" and not rest:
            return cls.none()
        if kind == "constant":
            return cls.constant(rest)
        if kind == "template":
            return cls.template(rest)
        if kind == "field-context":
            return cls.field_context(rest or "id")
        raise InvalidArgument(
            f"unknown AAD rule {text!r}: use none, constant:TEXT, template:TEXT (e.g. "
            "template:users:{id}:ssn) or field-context[:ID_COLUMN]")

    def columns(self) -> tuple[str, ...]:
        """The other columns of the row the rule reads."""
        return self.fields

    def evaluate(self, table: Any, column: str) -> Any:
        """The AAD for each row of ``table`` (a pyarrow Table or RecordBatch) for ``column``:
        None, one bytes value, or a :class:`~engine.Batch` of one per row (batch passes).

        Raises:
            ColumnNotFound: a column the rule reads is missing or not integer or text.
        """
        if self.kind == "none":
            return None
        if self.kind == "constant":
            return self.text.encode("utf-8")
        if self.kind == "field-context":
            return context_aad(self.text or column,
                               column_of(table, self.fields[0], "the AAD rule's column"),
                               id_field=self.fields[0])
        import pyarrow as pa
        import pyarrow.compute as pc

        parts: list[Any] = []
        for literal, name in zip(self.literals, self.fields + ("",)):
            if literal:
                parts.append(pa.scalar(literal, pa.large_string()))
            if name:
                parts.append(_as_text(column_of(table, name, "the AAD rule's column"), name))
        joined = pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))
        return Batch.from_arrow(joined.cast("large_string").view("large_binary"))

    def describe(self) -> str:
        """The rule as :meth:`parse` reads it."""
        if self.kind == "field-context":
            return f"field-context:{self.fields[0]}"
        return self.kind if self.kind == "none" else f"{self.kind}:{self.text}"


def column_of(table: Any, name: str, role: str = "column") -> Any:
    """Column ``name`` of a pyarrow Table or RecordBatch, as one array.

    Raises:
        ColumnNotFound: there is none (``role`` says what it was wanted for).
    """
    try:
        col = table.column(name)
    except KeyError:
        raise ColumnNotFound(f"{role} {name!r} is missing") from None
    return col.combine_chunks() if hasattr(col, "combine_chunks") else col


def _as_text(col: Any, name: str) -> Any:
    """A column as ``str`` would print it (integers and text only: there the two agree)."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.large_string()).fill_null("None")
    raise ColumnNotFound(f"the AAD template reads column {name!r} of type {t}; "
                         "only integer and text columns are supported")


@dataclass(frozen=True)
class SealedLayout:
    """The three columns of :meth:`engine.SealedBatch.to_arrow` plus the key version, as
    stored in Parquet. The AAD is the caller's only (as with ``seal_batch``); a row's nonce
    is 16 bytes under an AES-256-GCM version (the service's IVs) or 24 under an XAES-256-GCM
    one. Moving rows onto an XAES-256-GCM version needs a nonce column that holds 24 bytes
    (``binary``, not ``fixed_size_binary(16)``)."""

    nonce: str = "nonce"
    tag: str = "tag"
    ciphertext: str = "ciphertext"
    key_version: str = "key_version"

    @classmethod
    def parse(cls, text: str) -> "SealedLayout":
        """From ``NONCE,TAG,CIPHERTEXT,KEY_VERSION`` (column names)."""
        names = [n.strip() for n in text.split(",")]
        if len(names) != 4 or not all(names):
            raise InvalidArgument("a sealed layout names four columns: NONCE,TAG,CIPHERTEXT,"
                                  "KEY_VERSION")
        return cls(*names)

    def names(self) -> tuple[str, str, str, str]:
        return (self.nonce, self.tag, self.ciphertext, self.key_version)


@dataclass(frozen=True)
class Column:
    """One encrypted column of a job.

    Args:
        name: the column (for a :class:`SealedLayout`, the name the reports use).
        aad: the column's :class:`AadRule` (default: none).
        sealed: the three-column layout, for Parquet; None for a column of tokens or JSON
            values (text, blob, bytea or jsonb).
        indexes: the blind indexes written with this column's values: where a value moves to
            the new key version, its row's index values are computed from the plaintext under
            that version and written in the same write, with the same check. Other fields of
            a compound index are plain columns of the row or other columns of the job.
    """

    name: str
    aad: AadRule = field(default_factory=AadRule.none)
    sealed: SealedLayout | None = None
    indexes: tuple[IndexDefinition, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.indexes, tuple) or not all(
                isinstance(d, IndexDefinition) and self.name in d.columns for d in self.indexes):
            raise InvalidArgument(f"column {self.name!r}: indexes is a tuple of "
                                  "IndexDefinition objects over the column")

    def stored_columns(self) -> tuple[str, ...]:
        """The columns holding this column's values."""
        return self.sealed.names() if self.sealed is not None else (self.name,)

    def read_columns(self) -> tuple[str, ...]:
        """Every column a job must read for it (values and AAD)."""
        return self.stored_columns() + tuple(c for c in self.aad.columns()
                                             if c not in self.stored_columns())


def as_columns(columns: Sequence[Any], aad: Any = None, indexes: Any = None) -> list[Column]:
    """:class:`Column` objects from names or Column objects, with ``aad`` (one rule, or a
    mapping from column name to rule) for those given by name, and ``indexes`` (blind indexes:
    :class:`~engine.blind_index.BlindIndex`, :class:`~engine.blind_index.BlindIndexes` or
    :class:`~engine.blind_index.IndexDefinition` objects, or a sequence of them) each given to
    the first of its columns that the job has.

    Raises:
        InvalidArgument: no column, a name given twice, an AAD rule for a column the job does
            not have, an index over none of the job's columns, or an index column named twice
            or named like a column the job reads.
    """
    if isinstance(columns, (str, Column)):
        columns = [columns]
    rules = aad if isinstance(aad, dict) else {}
    default = aad if isinstance(aad, AadRule) else AadRule.none()
    if aad is not None and not isinstance(aad, (dict, AadRule)):
        raise InvalidArgument("aad is an AadRule, or a mapping from column name to AadRule")
    out = [c if isinstance(c, Column) else Column(str(c), rules.get(c, default)) for c in columns]
    names = [c.name for c in out]
    if not out:
        raise InvalidArgument("a job needs at least one column")
    if len(set(names)) != len(names):
        raise InvalidArgument("a column is named twice")
    unknown = set(rules) - set(names)
    if unknown:
        raise InvalidArgument(f"an AAD rule names column(s) the job does not have: "
                              f"{', '.join(sorted(unknown))}")
    for definition in definitions(indexes):
        owner = next((c for c in definition.columns if c in names), None)
        if owner is None:
            raise InvalidArgument(f"blind index {definition.name!r} reads none of the job's "
                                  f"columns ({', '.join(definition.columns)})")
        k = names.index(owner)
        out[k] = replace(out[k], indexes=out[k].indexes + (definition,))
    written = [d.name for c in out for d in c.indexes]
    read = {n for c in out for n in c.read_columns()} | set(names) | set(row_fields(out))
    clash = set(written) & read | {n for n in written if written.count(n) > 1}
    if clash:
        raise InvalidArgument(f"blind index column(s) named twice or like a column the job "
                              f"reads: {', '.join(sorted(clash))}")
    return out


def row_fields(columns: Sequence[Column]) -> tuple[str, ...]:
    """The plain columns the blind indexes of ``columns`` read: their fields that are not
    columns of the job (those are read as plaintext)."""
    names = {c.name for c in columns}
    return tuple(dict.fromkeys(f for c in columns for d in c.indexes for f in d.columns
                               if f not in names))
