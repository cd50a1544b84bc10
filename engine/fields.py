"""Field-level encryption of records (``FieldEncryption``).

``FieldEncryption.encrypt_field(user, "ssn")`` works on the class with the process-wide service;
``FieldEncryption(service, bind_context=True).encrypt_field(...)`` works the same on an instance.
Fields hold text: encrypted fields hold text tokens (``"ef1:..."``), decryption gives ``str``
back, and other values are refused (bytes included: encrypt them with
:meth:`EncryptionService.encrypt_many`, whose results decrypt to bytes). ``None`` or missing fields
are left alone. Every method returns new objects and leaves its input unchanged.

Encrypting always encrypts: a value that happens to look like a token is sealed like any other
text. To make re-running a job idempotent, pass ``skip_encrypted=True``: a value that is a token
is then opened (with this record's binding, under whatever retained key version it names) and
kept as it is when it authenticates, and refused when it does not, so that a token copied from
another record, or forged, is never stored as if it were this record's.

With ``bind_context`` the record id and the field name are bound into the AAD
(``b"efld1" || uint32 len(field) || field || str(id)``), so a token copied to another record or
field fails to decrypt.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Sequence

import numpy as np

from .batch import Batch
from .blind_index import BlindIndex, BlindIndexes, under_one_version
from .buffers import empty_bytes, is_arrow, pyarrow_module
from .codecs import prefix_each
from .errors import BatchInvalidTag, InvalidArgument, InvalidArgumentType
from .formats.envelope import is_text_token
from .formats.tokens import text_token_mask
from .records import (
    NONE_VALUES,
    STR_VALUES,
    field_values,
    pack_into as _pack_into,
    packed_size as _native_packed_size,
    value_kinds,
    with_field,
)
from .refusals import counted as _mark_counted, counts_refusals, metrics_of_service
from .service import EncryptionService, get_encryption_service
from .tables import decrypt_columns, encrypt_columns, is_table

__all__ = ["FieldEncryption", "context_aad"]

_CONTEXT_MAGIC = b"efld1"


def _check_text(field: str, value: Any) -> None:
    """Raises InvalidArgumentType unless ``value`` is str (the message shows no value)."""
    if not isinstance(value, str):
        raise InvalidArgumentType(
            f"field {field!r} holds {type(value).__name__}; FieldEncryption encrypts text (str): "
            f"encrypt bytes with EncryptionService.encrypt_many(..., binary=True)"
        )


def _context_prefix(field: str) -> bytes:
    name = field.encode("utf-8")
    return _CONTEXT_MAGIC + len(name).to_bytes(4, "big") + name


def context_aad(field: str, ids: Any, *, id_field: str = "id") -> Batch:
    """The AAD that ``FieldEncryption(bind_context=True)`` binds to ``field`` of each record,
    ``b"efld1" || uint32 len(field) || field || str(id)``, built in batch passes (a
    re-encryption job re-seals such values with exactly this AAD).

    Args:
        field: the field name.
        ids: the record ids, one per record: a list, a numpy array or a pyarrow column.
        id_field: the name of the id field, for the error message.

    Returns:
        A :class:`~engine.Batch` of one AAD per id.

    Raises:
        InvalidArgument: an id is None.
    """
    if is_arrow(ids):
        ids = ids.to_pylist()
    if any(i is None for i in ids):
        raise InvalidArgument(f"bind_context: a record lacks {id_field!r}")
    id_batch = Batch.from_list(list(map(str, ids)))  # str(id), exactly as for one record
    return prefix_each(_context_prefix(field), id_batch)


# Every error a public method raises is counted once in engine_encryption_errors_total.
_counted = counts_refusals(lambda self, *args, **kwargs: metrics_of_service(self._service))


class _dualmethod:
    """A method that runs on the instance, or, called on the class, on a default instance."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__func__ = func
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    def __get__(self, obj: Any, cls: type) -> Any:
        return types.MethodType(self.__func__, obj if obj is not None else cls())


class FieldEncryption:
    """Encrypts and decrypts named fields of dict records, one at a time or whole columns.

    Args:
        service: the :class:`~engine.service.EncryptionService` (default: the process-wide one,
            looked up at each call).
        bind_context: bind record id and field name into the AAD.
        id_field: the record key holding the id (when ``bind_context``).
    """

    __slots__ = ("_service", "_bind", "_id_field")

    def __init__(self, service: EncryptionService | None = None, *, bind_context: bool = False,
                 id_field: str = "id") -> None:
        self._service = service
        self._bind = bool(bind_context)
        self._id_field = id_field

    def __repr__(self) -> str:
        return f"<FieldEncryption bind_context={self._bind} id_field={self._id_field!r}>"

    @property
    def service(self) -> EncryptionService:
        """The service in use (the process-wide one unless given)."""
        return self._service if self._service is not None else get_encryption_service()

    def _aad(self, record: Any, field: str) -> bytes | None:
        if not self._bind:
            return None
        rid = record.get(self._id_field)
        if rid is None:
            raise InvalidArgument(
                f"bind_context needs the record id in {self._id_field!r}, which is missing"
            )
        return _context_prefix(field) + str(rid).encode("utf-8")

    # ---- one record ----

    @_dualmethod
    @_counted
    def encrypt_field(self, record: dict[str, Any], field: str, *,
                      skip_encrypted: bool = False) -> dict[str, Any]:
        """A copy of ``record`` with ``field`` encrypted to a text token (``None`` and a missing
        field are left as they are).

        Args:
            skip_encrypted: keep a value that already is a token of this record, after opening
                it; refuse one that does not open (see the module docstring).

        Raises:
            InvalidArgumentType: the value is not str.
            InvalidArgument: ``bind_context`` and the record has no id.
            InvalidTag, UnknownKeyVersion: ``skip_encrypted`` and the value is a token that is
                not this record's.
        """
        return self.encrypt_fields(record, [field], skip_encrypted=skip_encrypted)

    @_dualmethod
    @_counted
    def decrypt_field(self, record: dict[str, Any], field: str) -> dict[str, Any]:
        """A copy of ``record`` with ``field`` decrypted back to str (``None``/missing: as is).

        Raises:
            EnvelopeError: the value is not a token (or the JSON envelope).
            InvalidTag: wrong key, context, or tampered value.
        """
        return self.decrypt_fields(record, [field])

    @_dualmethod
    @_counted
    def encrypt_fields(self, record: dict[str, Any], fields: Sequence[str], *,
                       skip_encrypted: bool = False) -> dict[str, Any]:
        """A copy of ``record`` with each of ``fields`` encrypted (see :meth:`encrypt_field`)."""
        out = dict(record)
        service = self.service
        for field in fields:
            value = out.get(field)
            if value is None:
                continue
            _check_text(field, value)
            aad = self._aad(record, field)
            if skip_encrypted and is_text_token(value):
                service.decrypt(value, aad)  # this record's token: kept; anything else: raises
                continue
            out[field] = service.encrypt_token(value, aad)
        return out

    @_dualmethod
    @_counted
    def decrypt_fields(self, record: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
        """A copy of ``record`` with each of ``fields`` decrypted (see :meth:`decrypt_field`)."""
        out = dict(record)
        service = self.service
        for field in fields:
            value = out.get(field)
            if value is not None:
                out[field] = service.decrypt_text(value, self._aad(record, field))
        return out

    # ---- columns ----

    @_dualmethod
    @_counted
    def encrypt_column(self, records: Any, field: str, *, ids: Any = None,
                       skip_encrypted: bool = False,
                       blind_indexes: BlindIndexes | BlindIndex | None = None) -> Any:
        """Encrypts ``field`` across many records in one native batch call.

        Args:
            records: a list of dicts (returns a list of new dicts), or a column of values: a
                pandas Series (returns a Series), a pyarrow array (returns a pyarrow
                ``large_string`` array) or a list of values (returns a list).
            field: the field name (also bound into the AAD with ``bind_context``).
            ids: for a column of values with ``bind_context``: the record ids, one per value.
            skip_encrypted: keep values that already are this column's tokens, after opening
                them all in one batch; refuse the column when any does not open.
            blind_indexes: blind indexes (:mod:`engine.blind_index`) written beside the field
                (``email_idx``) from the plaintext, into records or tables only.

        A pyarrow ``Table``/``RecordBatch`` or a pandas/polars ``DataFrame`` is handed to
        :func:`engine.tables.encrypt_columns` (a new table of the same type; with
        ``bind_context`` the AAD template is ``"{<id_field>}:{column}"``).

        Raises:
            InvalidArgumentType: a present value is not str.
            InvalidArgument: ``bind_context`` without ids; blind indexes for a bare column, or
                one named like the field, the id field or a field an index reads.
            BatchInvalidTag: ``skip_encrypted`` and some tokens are not this column's (``.failed``
                gives their record indices); nothing is returned.
            NormalisationError: a value fails its index's normaliser (nothing is encrypted).
        """
        if is_table(records):
            return encrypt_columns(records, field, aad_template=self._table_aad(),
                                   service=self.service, blind_indexes=blind_indexes)
        if blind_indexes is not None:
            if not (isinstance(records, (list, tuple)) and records
                    and isinstance(records[0], dict)):
                raise InvalidArgument("blind indexes are written into dict records or tables")
            if isinstance(blind_indexes, BlindIndex):
                blind_indexes = BlindIndexes(blind_indexes)
            blind_indexes.check_names({field, self._id_field} if self._bind else {field})
            indexes = blind_indexes
            return under_one_version(self.service.provider, lambda version: _Column.of(
                self, indexes.add_to_records(records, version=version), field, ids
            ).encrypt(skip_encrypted))
        return _Column.of(self, records, field, ids).encrypt(skip_encrypted)

    @_dualmethod
    @_counted
    def decrypt_column(self, records: Any, field: str, *, ids: Any = None) -> Any:
        """Decrypts ``field`` across many records (tokens grouped by key version, batch calls).

        Returns the same kind of container as :meth:`encrypt_column`; values become str.

        Raises:
            EnvelopeError: a present value is not a token (the message gives its index).
            BatchInvalidTag: some values failed authentication; nothing is returned.
        """
        if is_table(records):
            return decrypt_columns(records, field, aad_template=self._table_aad(),
                                   service=self.service)
        return _Column.of(self, records, field, ids).decrypt()

    def _table_aad(self) -> str | None:
        return "{" + self._id_field + "}:{column}" if self._bind else None


class _Column:
    """One field of many records, as a list of values plus how to rebuild the container."""

    __slots__ = ("fe", "field", "values", "ids", "rebuild", "arrow")

    def __init__(self, fe: FieldEncryption, field: str, values: list[Any], ids: Any,
                 rebuild: Callable[[list[Any]], Any], arrow: Any = None) -> None:
        self.fe, self.field, self.values, self.ids = fe, field, values, ids
        self.rebuild, self.arrow = rebuild, arrow

    @classmethod
    def of(cls, fe: FieldEncryption, records: Any, field: str, ids: Any) -> "_Column":
        module = type(records).__module__
        if module.startswith("pandas"):
            import pandas as pd

            def rebuild(vals: list[Any]) -> Any:
                return pd.Series(vals, index=records.index, name=records.name, dtype=object)

            # pandas stores a missing value as NaN/NA; the engine's "missing" is None
            values = records.astype(object).where(records.notna(), None).tolist()
            return cls(fe, field, values, ids, rebuild)
        if is_arrow(records):
            pa = pyarrow_module()
            arr = records.combine_chunks() if isinstance(records, pa.ChunkedArray) else records
            return cls(fe, field, [], ids, list, arrow=arr)  # values and rebuild: unused
        if not isinstance(records, (list, tuple)):
            raise InvalidArgumentType(
                "records must be a list of dicts, a list of values, a pandas Series or a "
                f"pyarrow array, not {type(records).__name__}"
            )
        if records and all(isinstance(r, dict) for r in (records[0], records[-1])):
            return cls._of_dicts(fe, list(records), field, ids)
        return cls(fe, field, list(records), ids, lambda vals: vals)

    @classmethod
    def _of_dicts(cls, fe: FieldEncryption, records: list[Any], field: str, ids: Any) -> "_Column":
        values = field_values(records, field)
        if fe._bind and ids is None:
            ids = field_values(records, fe._id_field)

        def rebuild(vals: list[Any]) -> list[Any]:
            return with_field(records, field, vals)  # a record without the field stays without

        return cls(fe, field, values, ids, rebuild)

    # ---- the vectorized core ----

    def _packed(self) -> tuple[np.ndarray, Batch]:
        """(indices of the present values, a Batch of them as UTF-8).

        A pyarrow string column is wrapped as it is; Python values are checked and packed in one
        C pass each (``None`` marks a missing value).

        Raises:
            InvalidArgumentType: a present value (or the column) is not text.
        """
        if self.arrow is not None:
            return self._present(self.arrow)
        values = self.values
        kinds = value_kinds(values)
        if kinds & ~(STR_VALUES | NONE_VALUES):
            bad = next(v for v in values if v is not None and not isinstance(v, str))
            _check_text(self.field, bad)
        if kinds & NONE_VALUES:
            mask = np.empty(len(values), dtype=np.uint8)
            size = _native_packed_size(values, True)
            assert size is not None  # value_kinds above: every value is a str or None
            out = empty_bytes(size)
            offsets = np.frombuffer(_pack_into(values, out, mask), dtype=np.int64)
            present = np.flatnonzero(mask == 0)
            return present, Batch._trusted(out, offsets).take(present)
        return np.arange(len(values)), Batch.from_list(values)

    def _present(self, arr: Any) -> tuple[np.ndarray, Batch]:
        """Indices of non-null values and a Batch of them (UTF-8)."""
        pa = pyarrow_module()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise InvalidArgumentType(
                f"column {self.field!r} is {arr.type}; FieldEncryption encrypts text (string) "
                f"columns (engine.tables keeps other types)"
            )
        if arr.null_count:
            present = np.flatnonzero(~arr.is_null().to_numpy(zero_copy_only=False))
            arr = arr.drop_null()
        else:
            present = np.arange(len(arr))
        return present, Batch.from_arrow(arr)

    def _aad(self, indices: np.ndarray) -> Any:
        if not self.fe._bind:
            return None
        if self.ids is None:
            raise InvalidArgument("bind_context needs the record ids (ids=... for a column)")
        if len(self.ids) != self._count():
            raise InvalidArgument("ids must have one value per record")
        aad = context_aad(self.field, self.ids, id_field=self.fe._id_field)
        return aad if len(indices) == len(aad) else aad.take(indices)

    def _count(self) -> int:
        return len(self.arrow) if self.arrow is not None else len(self.values)

    def encrypt(self, skip_encrypted: bool) -> Any:
        service = self.fe.service
        present, batch = self._packed()
        todo_local = None
        if skip_encrypted:
            tokens = np.flatnonzero(text_token_mask(batch))
            if tokens.shape[0]:
                self._verify(service, present[tokens], batch.take(tokens))
                todo_local = np.flatnonzero(~np.isin(np.arange(len(batch)), tokens))
                batch = batch.take(todo_local)
        todo = present if todo_local is None else present[todo_local]
        arrow = self.arrow is not None
        sealed = service.encrypt_many(batch, self._aad(todo), arrow=arrow) if len(todo) else []
        return self._output(todo, sealed)

    def _verify(self, service: EncryptionService, where: np.ndarray, tokens: Batch) -> None:
        """Opens the column's existing tokens in one batch; raises, naming the records, unless
        every one is this column's."""
        try:
            service.decrypt_many(tokens, self._aad(where))
        except BatchInvalidTag as exc:
            failed = where[exc.failed]
        else:
            return
        raise _mark_counted(BatchInvalidTag(failed, None))  # counted by decrypt_many

    def decrypt(self) -> Any:
        service = self.fe.service
        present, batch = self._packed()
        if not len(present):
            texts: Any = []
        elif self.arrow is not None:  # straight back into a string column, no Python str
            texts = service.decrypt_many(batch, self._aad(present)).to_arrow(text=True)
        else:
            texts = service.decrypt_many_text(batch, self._aad(present))
        return self._output(present, texts)

    def _output(self, indices: np.ndarray, new_values: Any) -> Any:
        if self.arrow is not None:
            pa = pyarrow_module()
            import pyarrow.compute as pc

            arr, t = self.arrow, self.arrow.type
            if not isinstance(new_values, pa.Array):
                new_values = pa.array(new_values, type=pa.large_string())
            if len(indices) == len(arr):
                return new_values
            base = arr if pa.types.is_large_string(t) else arr.cast(pa.large_string())
            mask = np.zeros(len(arr), dtype=bool)
            mask[indices] = True
            return pc.replace_with_mask(base, pa.array(mask), new_values)
        if len(indices) == len(self.values):
            vals = new_values if isinstance(new_values, list) else list(new_values)
        else:
            obj = np.empty(len(self.values), dtype=object)
            obj[:] = self.values
            if len(indices):
                replacement = np.empty(len(indices), dtype=object)
                replacement[:] = new_values
                obj[indices] = replacement
            vals = obj.tolist()
        return self.rebuild(vals)
