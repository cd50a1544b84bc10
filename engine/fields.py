"""Field-level encryption of records (the seed's ``FieldEncryption``).

``FieldEncryption.encrypt_field(user, "ssn")`` works on the class, as in the seed, with the
process-wide service; ``FieldEncryption(service, bind_context=True).encrypt_field(...)`` works the
same on an instance. Encrypted fields hold text tokens (``"ef1:..."``); a value that already is a
strictly valid token is never encrypted twice, and ``None`` or missing fields are left alone.
Every method returns new objects and leaves its input unchanged.

With ``bind_context`` the record id and the field name are bound into the AAD
(``b"efld1" || uint32 len(field) || field || str(id)``), so a token copied to another record or
field fails to decrypt.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Sequence

import numpy as np

from .batch import (
    BYTES_VALUES,
    NONE_VALUES,
    STR_VALUES,
    Batch,
    _pyarrow,
    field_values,
    prefix_each,
    value_kinds,
    with_field,
)
from .envelope import is_text_token, text_token_mask
from .errors import InvalidArgument, InvalidArgumentType
from .service import EncryptionService, get_encryption_service

__all__ = ["FieldEncryption", "context_aad"]

_CONTEXT_MAGIC = b"efld1"


def _check_encryptable(field: str, value: Any) -> None:
    """Raises InvalidArgumentType unless ``value`` is str or bytes-like."""
    if not isinstance(value, (str, bytes, bytearray, memoryview)):
        raise InvalidArgumentType(
            f"field {field!r} holds {type(value).__name__}; only str or bytes are encrypted"
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
    missing = InvalidArgument(f"bind_context: a record lacks {id_field!r}")
    pa = _pyarrow()
    id_batch = None
    if pa is not None:
        try:
            arr = ids if type(ids).__module__.startswith("pyarrow") else pa.array(ids)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            if arr.null_count:
                raise missing
            id_batch = Batch.from_arrow(arr.cast(pa.large_string()))
        except (pa.ArrowException, TypeError):
            id_batch = None
    if id_batch is None:
        if any(i is None for i in ids):
            raise missing
        id_batch = Batch.from_list([str(i) for i in ids])
    return prefix_each(_context_prefix(field), id_batch)


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
    def encrypt_field(self, record: dict, field: str) -> dict:
        """A copy of ``record`` with ``field`` encrypted to a text token.

        ``None``, a missing field and a value that already is a token are left as they are.

        Raises:
            InvalidArgumentType: the value is neither str nor bytes.
            InvalidArgument: ``bind_context`` and the record has no id.
        """
        return self.encrypt_fields(record, [field])

    @_dualmethod
    def decrypt_field(self, record: dict, field: str) -> dict:
        """A copy of ``record`` with ``field`` decrypted back to str (``None``/missing: as is).

        Raises:
            EnvelopeError: the value is not a token (or the seed's JSON shape).
            InvalidTag: wrong key, context, or tampered value.
        """
        return self.decrypt_fields(record, [field])

    @_dualmethod
    def encrypt_fields(self, record: dict, fields: Sequence[str]) -> dict:
        """A copy of ``record`` with each of ``fields`` encrypted (see :meth:`encrypt_field`)."""
        out = dict(record)
        service = self.service
        for field in fields:
            value = out.get(field)
            if value is None or is_text_token(value):
                continue
            _check_encryptable(field, value)
            out[field] = service.encrypt_token(value, self._aad(record, field))
        return out

    @_dualmethod
    def decrypt_fields(self, record: dict, fields: Sequence[str]) -> dict:
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
    def encrypt_column(self, records: Any, field: str, *, ids: Any = None) -> Any:
        """Encrypts ``field`` across many records in one native batch call.

        Args:
            records: a list of dicts (returns a list of new dicts), or a column of values: a
                pandas Series (returns a Series), a pyarrow array (returns a pyarrow
                ``large_string`` array) or a list of values (returns a list).
            field: the field name (also bound into the AAD with ``bind_context``).
            ids: for a column of values with ``bind_context``: the record ids, one per value.

        Raises:
            InvalidArgumentType: a value is neither str nor bytes.
            InvalidArgument: ``bind_context`` without ids.
        """
        return _Column.of(self, records, field, ids).encrypt()

    @_dualmethod
    def decrypt_column(self, records: Any, field: str, *, ids: Any = None) -> Any:
        """Decrypts ``field`` across many records (tokens grouped by key version, batch calls).

        Returns the same kind of container as :meth:`encrypt_column`; values become str.

        Raises:
            EnvelopeError: a present value is not a token (the message gives its index).
            BatchInvalidTag: some values failed authentication; nothing is returned.
        """
        return _Column.of(self, records, field, ids).decrypt()


class _Column:
    """One field of many records, as a list of values plus how to rebuild the container."""

    __slots__ = ("fe", "field", "values", "ids", "rebuild", "arrow")

    def __init__(self, fe: FieldEncryption, field: str, values: list, ids: Any,
                 rebuild: Callable[[list], Any], arrow: Any = None) -> None:
        self.fe, self.field, self.values, self.ids = fe, field, values, ids
        self.rebuild, self.arrow = rebuild, arrow

    @classmethod
    def of(cls, fe: FieldEncryption, records: Any, field: str, ids: Any) -> "_Column":
        module = type(records).__module__
        if module.startswith("pandas"):
            import pandas as pd

            def rebuild(vals: list) -> Any:
                return pd.Series(vals, index=records.index, name=records.name, dtype=object)

            # pandas stores a missing value as NaN/NA; the engine's "missing" is None
            values = records.astype(object).where(records.notna(), None).tolist()
            return cls(fe, field, values, ids, rebuild)
        if module.startswith("pyarrow"):
            pa = _pyarrow()
            arr = records.combine_chunks() if isinstance(records, pa.ChunkedArray) else records
            return cls(fe, field, None, ids, None, arrow=arr)
        if not isinstance(records, (list, tuple)):
            raise InvalidArgumentType(
                "records must be a list of dicts, a list of values, a pandas Series or a "
                f"pyarrow array, not {type(records).__name__}"
            )
        if records and all(isinstance(r, dict) for r in (records[0], records[-1])):
            return cls._of_dicts(fe, list(records), field, ids)
        return cls(fe, field, list(records), ids, lambda vals: vals)

    @classmethod
    def _of_dicts(cls, fe: FieldEncryption, records: list, field: str, ids: Any) -> "_Column":
        values = field_values(records, field)
        if fe._bind and ids is None:
            ids = field_values(records, fe._id_field)

        def rebuild(vals: list) -> list:
            return with_field(records, field, vals)  # a record without the field stays without

        return cls(fe, field, values, ids, rebuild)

    # ---- the vectorized core ----

    def _packed(self) -> tuple[np.ndarray, Batch, Any]:
        """(indices of the present values, a Batch of them, which of them are str).

        A pyarrow column is wrapped as it is. Python values that are all str or all bytes are
        packed in C (with None among them, by pyarrow when installed); a mixture is classified
        value by value in :meth:`_fallback`, so that only str values count as tokens already,
        as for :meth:`FieldEncryption.encrypt_field`. "Which are str" is a bool for the whole
        column or an array of one bool per present value.
        """
        pa = _pyarrow()
        if self.arrow is not None:
            present, batch = self._present(self.arrow)
            t = self.arrow.type
            return present, batch, pa.types.is_string(t) or pa.types.is_large_string(t)
        kinds = value_kinds(self.values)
        if kinds in (STR_VALUES, BYTES_VALUES):
            return np.arange(len(self.values)), Batch.from_list(self.values), kinds == STR_VALUES
        kinds &= ~NONE_VALUES
        if pa is not None and kinds in (0, STR_VALUES, BYTES_VALUES):
            try:
                arr = pa.array(self.values, type=pa.large_binary() if kinds == BYTES_VALUES
                               else pa.large_string())
            except (pa.ArrowException, TypeError, ValueError):
                arr = None
            if arr is not None:
                present, batch = self._present(arr)
                return present, batch, kinds != BYTES_VALUES
        return self._fallback()

    def _present(self, arr: Any) -> tuple[np.ndarray, Batch]:
        """Indices of non-null values and a Batch of them (str as UTF-8)."""
        pa = _pyarrow()
        if arr.null_count:
            present = np.flatnonzero(~arr.is_null().to_numpy(zero_copy_only=False))
            arr = arr.drop_null()
        else:
            present = None
        if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
            arr = arr.cast(pa.large_binary())
        elif pa.types.is_large_string(arr.type):
            arr = arr.view(pa.large_binary())
        elif not pa.types.is_large_binary(arr.type):
            raise InvalidArgumentType(f"a {arr.type} column cannot be encrypted; use str or bytes")
        n = len(arr)
        return (np.arange(n) if present is None else present), Batch.from_arrow(arr)

    def _fallback(self) -> tuple[np.ndarray, Batch, np.ndarray]:
        """Without pyarrow (or with mixed str/bytes): classify the Python values one by one."""
        present = np.flatnonzero(np.fromiter((v is not None for v in self.values), dtype=bool,
                                             count=len(self.values)))
        vals = [self.values[i] for i in present.tolist()]
        for v in vals:
            _check_encryptable(self.field, v)
        is_str = np.fromiter((isinstance(v, str) for v in vals), dtype=bool, count=len(vals))
        return present, Batch.from_list(vals), is_str

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

    def encrypt(self) -> Any:
        service = self.fe.service
        present, batch, is_str = self._packed()
        already = text_token_mask(batch) & is_str
        todo_local = np.flatnonzero(~already)
        todo = present[todo_local]
        if len(todo_local) < len(batch):
            batch = batch.take(todo_local)
        arrow = self.arrow is not None
        tokens = service.encrypt_many(batch, self._aad(todo), arrow=arrow) if len(todo) else []
        return self._output(todo, tokens)

    def decrypt(self) -> Any:
        service = self.fe.service
        present, batch, _ = self._packed()
        if not len(present):
            texts: Any = []
        elif self.arrow is not None:  # straight back into a string column, no Python str
            texts = service.decrypt_many(batch, self._aad(present)).to_arrow(text=True)
        else:
            texts = service.decrypt_many_text(batch, self._aad(present))
        return self._output(present, texts)

    def _output(self, indices: np.ndarray, new_values: Any) -> Any:
        if self.arrow is not None:
            pa = _pyarrow()
            import pyarrow.compute as pc

            arr, t = self.arrow, self.arrow.type
            if not isinstance(new_values, pa.Array):
                new_values = pa.array(new_values, type=pa.large_string())
            if len(indices) == len(arr):
                return new_values
            if pa.types.is_large_string(t):
                base = arr
            elif pa.types.is_string(t):
                base = arr.cast(pa.large_string())
            else:  # binary input: every present value is replaced, the rest are nulls
                base = pa.nulls(len(arr), pa.large_string())
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
