"""How a Parquet file was written, as far as its metadata tells, so that a rewrite keeps it: each
column's codec, dictionary encoding, statistics and value encoding, the row groups and their sort
order, the page index, the format version (key-value metadata travels with the Arrow schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ParquetLayout"]

_VALUE_ENCODINGS = ("BYTE_STREAM_SPLIT", "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY",
                    "DELTA_BYTE_ARRAY")


@dataclass(frozen=True)
class ParquetLayout:
    """The writer settings of an existing Parquet file, per column path.

    Not recoverable from a file, and so left at pyarrow's defaults: compression levels, page
    sizes, the data page version and bloom filter settings.
    """

    version: str
    compression: dict[str, str]
    use_dictionary: tuple[str, ...]
    write_statistics: tuple[str, ...]
    column_encoding: dict[str, str]
    sorting_columns: tuple[Any, ...] | None
    write_page_index: bool
    row_groups: tuple[int, ...]

    @classmethod
    def of(cls, metadata: Any) -> "ParquetLayout":
        """The layout of a file from its ``pyarrow.parquet.FileMetaData``."""
        compression: dict[str, str] = {}
        dictionary, statistics = [], []
        encoding: dict[str, str] = {}
        page_index = False
        sorting = None
        if metadata.num_row_groups:
            group = metadata.row_group(0)
            sorting = group.sorting_columns or None
            for i in range(group.num_columns):
                chunk = group.column(i)
                path = chunk.path_in_schema
                compression[path] = chunk.compression.lower()
                if chunk.has_dictionary_page:
                    dictionary.append(path)
                else:
                    found = [e for e in _VALUE_ENCODINGS if e in chunk.encodings]
                    if found:
                        encoding[path] = found[0]
                if chunk.is_stats_set:
                    statistics.append(path)
                page_index = page_index or chunk.has_offset_index
        return cls(metadata.format_version, compression, tuple(dictionary), tuple(statistics),
                   encoding, sorting, page_index,
                   tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)))

    def writer_options(self, *, plain: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword arguments for ``pyarrow.parquet.ParquetWriter`` that write this layout;
        column paths in ``plain`` (or under them) get neither dictionary nor statistics (the
        columns that now hold ciphertexts)."""
        def kept(paths: tuple[str, ...]) -> list[str]:
            return [p for p in paths if not any(p == c or p.startswith(c + ".") for c in plain)]

        options: dict[str, Any] = {
            "version": self.version,
            "compression": dict(self.compression) or "snappy",
            "use_dictionary": kept(self.use_dictionary),
            "write_statistics": kept(self.write_statistics),
            "write_page_index": self.write_page_index,
        }
        encoding = {p: e for p, e in self.column_encoding.items() if p in kept((p,))}
        if encoding:
            options["column_encoding"] = encoding
        if self.sorting_columns:
            options["sorting_columns"] = list(self.sorting_columns)
        return options
