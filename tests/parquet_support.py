"""Comparing two Parquet files property by property (for tests of rewritten files)."""

from __future__ import annotations

import pyarrow.parquet as pq

from engine.parquet_pages import column_pages


def chunk_bytes(path: str, group: int, column: int) -> bytes:
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(chunk.total_compressed_size)


def file_properties(path: str) -> dict:
    m = pq.ParquetFile(path).metadata
    return {"format_version": m.format_version, "key_value": m.metadata,
            "rows": [m.row_group(i).num_rows for i in range(m.num_row_groups)],
            "sorting": [m.row_group(i).sorting_columns for i in range(m.num_row_groups)],
            "schema": str(m.schema).split("\n", 1)[1]}


def chunk_properties(chunk) -> dict:
    return {"path": chunk.path_in_schema, "codec": chunk.compression,
            "encodings": chunk.encodings, "dictionary": chunk.has_dictionary_page,
            "statistics": chunk.statistics.to_dict() if chunk.is_stats_set else None,
            "physical": chunk.physical_type, "column_index": chunk.has_column_index,
            "offset_index": chunk.has_offset_index, "bloom": chunk.bloom_filter_length,
            "sizes": (chunk.total_compressed_size, chunk.total_uncompressed_size)}


def page_kinds(path: str, group: int, column: int) -> list[tuple[int, bool]]:
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    with open(path, "rb") as f:
        return [(p.kind, p.has_crc) for p in column_pages(f, start,
                                                            start + chunk.total_compressed_size)]


def assert_kept(src: str, dst: str, owned: set[str]) -> None:
    """Everything of ``src`` but the values of ``owned`` columns is in ``dst``: file-level
    properties, and per column chunk not owned its metadata and its bytes (pages, headers,
    codec and level, encodings, statistics); for owned chunks, codec, dictionary, statistics
    present or not, physical type and page kinds."""
    assert file_properties(dst) == file_properties(src)
    before, after = pq.ParquetFile(src).metadata, pq.ParquetFile(dst).metadata
    for g in range(before.num_row_groups):
        for j in range(before.num_columns):
            a, b = before.row_group(g).column(j), after.row_group(g).column(j)
            if a.path_in_schema.split(".")[0] in owned:
                pa_, pb = chunk_properties(a), chunk_properties(b)
                for key in ("path", "codec", "dictionary", "physical", "column_index"):
                    assert pa_[key] == pb[key], (a.path_in_schema, key)
                assert (pa_["statistics"] is None) == (pb["statistics"] is None)
                assert page_kinds(src, g, j) == page_kinds(dst, g, j)
                continue
            assert chunk_properties(b) == chunk_properties(a), (g, chunk_properties(a), chunk_properties(b))
            assert chunk_bytes(dst, g, j) == chunk_bytes(src, g, j), a.path_in_schema
    untouched = [n for n in pq.read_schema(src).names if n not in owned]
    assert pq.read_table(dst, columns=untouched).equals(pq.read_table(src, columns=untouched))
