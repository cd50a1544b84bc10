"""What a Parquet file's footer does not say about its pages: read from the page headers.

The footer records each column chunk's codec but not its compression level, nor whether its
data pages are version 1 or 2, nor whether the pages carry a CRC. Those are in the page headers
(the ``PageHeader`` struct of ``parquet.thrift``, read by :mod:`engine.thrift_compact`), which
pyarrow does not expose; :func:`column_pages` reads the first pages of a column chunk, and
:func:`compression_level` finds a level that reproduces their compressed bytes exactly.
Only the handful of ``PageHeader`` fields needed here are decoded; everything else is skipped
by its wire type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Sequence

from .thrift_compact import BOOL, INT, CompactReader

__all__ = ["Page", "PageFormatError", "column_pages", "compression_level"]

DATA_PAGE, INDEX_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 1, 2, 3
# A page header is small (statistics included); this bounds what one read may take.
_MAX_HEADER = 1 << 16
# PageHeader: 1 type, 2 uncompressed_page_size, 3 compressed_page_size, 4 crc,
# 8 data_page_header_v2 (5 definition_levels_byte_length, 6 repetition_levels_byte_length,
# 7 is_compressed).
_PAGE_HEADER: dict[int, Any] = {1: INT, 2: INT, 3: INT, 4: INT, 8: {5: INT, 6: INT, 7: BOOL}}


class PageFormatError(ValueError):
    """A page header that does not parse (a truncated or damaged file)."""


@dataclass(frozen=True)
class Page:
    """One page of a column chunk.

    Attributes:
        kind: ``DATA_PAGE``, ``DICTIONARY_PAGE``, ``DATA_PAGE_V2`` (or ``INDEX_PAGE``).
        uncompressed_size, compressed_size: as the header gives them.
        has_crc: the header carries a CRC-32 of the page.
        levels_size: bytes of repetition and definition levels before the values (version 2
            data pages store them uncompressed).
        compressed: False for a version 2 data page stored uncompressed.
        payload: the page's bytes after the header (None when not read).
    """

    kind: int
    uncompressed_size: int
    compressed_size: int
    has_crc: bool
    levels_size: int = 0
    compressed: bool = True
    payload: bytes | None = None


def column_pages(f: BinaryIO, start: int, end: int, *, max_pages: int = 4,
                 max_bytes: int = 1 << 20) -> list[Page]:
    """The first pages of the column chunk stored in ``f`` from ``start`` to ``end`` (its
    dictionary page, if any, comes first), with their payloads while they fit in
    ``max_bytes``.

    Raises:
        PageFormatError: a header does not parse or a page runs past ``end``.
    """
    pages: list[Page] = []
    pos = start
    budget = max_bytes
    while pos < end and len(pages) < max_pages:
        f.seek(pos)
        reader = CompactReader(f.read(min(_MAX_HEADER, end - pos)), error=PageFormatError,
                               what="a page header")
        fields = reader.struct(_PAGE_HEADER)
        size = reader.pos
        if not {1, 2, 3} <= fields.keys():
            raise PageFormatError("a page header without its type and sizes")
        v2 = fields.get(8, {})
        page = Page(fields[1], fields[2], fields[3], 4 in fields,
                    v2.get(5, 0) + v2.get(6, 0), v2.get(7, True))
        body = pos + size
        if fields[3] < 0 or body + fields[3] > end:
            raise PageFormatError("a page runs past its column chunk")
        if fields[3] <= budget:
            f.seek(body)
            page = dataclasses.replace(page, payload=f.read(fields[3]))
            budget -= fields[3]
        pages.append(page)
        pos = body + fields[3]
    return pages


def compression_level(codec: str, pages: Iterable[Page], candidates: Sequence[int]) -> int | None:
    """The first level of ``candidates`` at which ``codec`` (a pyarrow codec name that takes a
    level) compresses every page read to exactly the bytes stored; None when none does (a
    writer with another library or settings) or when no page holds compressed bytes.

    Each candidate is tried on the pages from the smallest up, so most are turned down by the
    first. Give pages of several sizes: neighbouring levels compress small inputs alike (zstd
    picks its parameters by input size up to 256 KiB), and a level that gives every page back
    byte for byte is the writer's, or one that compresses like it.
    """
    import pyarrow as pa

    samples = []
    for page in pages:
        if page.payload is None or not page.compressed:
            continue
        stored = page.payload[page.levels_size:]
        size = page.uncompressed_size - page.levels_size
        try:
            plain = pa.decompress(stored, size, codec=codec, asbytes=True)
        except (pa.ArrowException, OSError, ValueError):
            return None
        samples.append((plain, stored))
    if not samples:
        return None
    samples.sort(key=lambda s: len(s[0]))
    for level in candidates:
        codec_at = pa.Codec(codec, compression_level=level)
        if all(codec_at.compress(plain, asbytes=True) == stored for plain, stored in samples):
            return level
    return None
