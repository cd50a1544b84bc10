"""The members of a stored JSON envelope that are not the engine's, carried into its new value.

An application may store its own members beside the engine's in the JSON envelope (``{"iv":
..., "source": "crm", "meta": {...}}``); decryption ignores them. When a value is sealed again
(:meth:`engine.EncryptionService.reencrypt_many`), :func:`keep_extra_members` puts them back in
the new envelope: every member whose (decoded) name is not one of :data:`ENGINE_MEMBERS`, in
its order, with its name and value exactly as they were written (escapes, number spellings,
nested whitespace); the engine's members take the place of the first of their names, a
repeated engine member is dropped (JSON readers keep only one of them), and engine members the
old value lacked are added at the end. Only the whitespace between top-level members is not
kept. A value with no extra member stays exactly as the engine wrote it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import numpy as np

__all__ = ["ENGINE_MEMBERS", "keep_extra_members", "object_members"]

#: The JSON envelope's members, in the order the engine writes them.
ENGINE_MEMBERS = ("iv", "ciphertext", "authTag", "keyVersion", "timestamp", "algorithm")

_ENGINE_NAMES = "|".join(ENGINE_MEMBERS)
_PLAIN_VALUE = r'(?:"[^"\\]*"|-?[0-9]+|null)'
_PLAIN_MEMBER = rf'"(?:{_ENGINE_NAMES})"\s*:\s*{_PLAIN_VALUE}'
# A value made of engine members only, spelled plainly: nothing to carry (RE2 syntax, matched
# by pyarrow over the whole batch at once).
_ONLY_ENGINE = rf'^\s*\{{\s*(?:{_PLAIN_MEMBER}(?:\s*,\s*{_PLAIN_MEMBER})*)?\s*\}}\s*$'
_SPACE = re.compile(r"[ \t\n\r]*")
_scan_string: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip_space(text: str, pos: int) -> int:
    """The first position at or after ``pos`` that is not JSON white space."""
    match = _SPACE.match(text, pos)  # always matches (possibly nothing)
    return match.end() if match else pos
_DECODER = json.JSONDecoder()


def keep_extra_members(new: Any, previous: Any) -> Any:
    """``new`` (JSON envelopes as the engine writes them, a :class:`~engine.Batch`) with the
    extra members of ``previous`` (the values they replace, one per value) carried over.

    Values made of engine members only are found in one pass and left as they are; the others
    are read one by one.
    """
    from ..batch import Batch

    n = len(new)
    if not n:
        return new
    rest = np.flatnonzero(~_only_engine_members(previous))
    if not rest.shape[0]:
        return new
    merged = []
    for i in rest.tolist():
        merged.append(_merge(bytes(previous[i]), bytes(new[i])))
    if rest.shape[0] == n:
        return Batch.from_list(merged)
    from ..codecs import interleave

    keep = np.setdiff1d(np.arange(n), rest)
    return interleave(n, [(keep, new.take(keep)), (rest, Batch.from_list(merged))])


def _only_engine_members(values: Any) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values.to_arrow()  # binary: a value that is not UTF-8 simply does not match
    try:
        text = arr.cast(pa.large_string())
    except pa.ArrowInvalid:
        return np.zeros(len(values), dtype=bool)
    return pc.fill_null(pc.match_substring_regex(text, _ONLY_ENGINE), False).to_numpy(
        zero_copy_only=False)


def _merge(previous: bytes, new: bytes) -> bytes:
    """``new`` with ``previous``'s extra members in place (see the module docstring)."""
    old = object_members(previous.decode(json.detect_encoding(previous)))
    if old is None or all(name in ENGINE_MEMBERS for name, _ in old):
        return new
    fresh = dict(object_members(new.decode("utf-8")) or ())
    out, placed = [], set()
    for name, raw in old:
        if name not in ENGINE_MEMBERS:
            out.append(raw)
        elif name not in placed and name in fresh:
            placed.add(name)
            out.append(fresh[name])
    out.extend(fresh[name] for name in ENGINE_MEMBERS if name in fresh and name not in placed)
    return ("{" + ",".join(out) + "}").encode("utf-8")


def object_members(text: str) -> list[tuple[str, str]] | None:
    """The top-level members of a JSON object as (decoded name, raw ``"name":value`` text),
    in order; None when ``text`` is not one JSON object."""
    pos = _skip_space(text, 0)
    if text[pos:pos + 1] != "{":
        return None
    pos = _skip_space(text, pos + 1)
    members: list[tuple[str, str]] = []
    if text[pos:pos + 1] == "}":
        return members if not text[_skip_space(text, pos + 1):] else None
    try:
        while True:
            if text[pos:pos + 1] != '"':
                return None
            name, end = _scan_string(text, pos + 1)
            raw_name = text[pos:end]
            pos = _skip_space(text, end)
            if text[pos:pos + 1] != ":":
                return None
            start = _skip_space(text, pos + 1)
            _value, end = _DECODER.raw_decode(text, start)
            members.append((name, f"{raw_name}:{text[start:end]}"))
            pos = _skip_space(text, end)
            if text[pos:pos + 1] == ",":
                pos = _skip_space(text, pos + 1)
                continue
            if text[pos:pos + 1] == "}" and not text[_skip_space(text, pos + 1):]:
                return members
            return None
    except (ValueError, RecursionError):
        return None
