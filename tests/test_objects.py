"""The C-API helpers of engine._native._objects that build and read Python objects in bulk:
str per record, field reads and record copies, value kinds, the str/bytes packer. They must
survive Python code that runs inside their loops (a key's __eq__, a dict subclass, gc callbacks)."""

from __future__ import annotations

import numpy as np
import pytest

import engine


def test_batch_to_text_ascii_utf8_and_every_separator_case():
    from engine.codecs import batch_to_text

    every_ascii = "".join(chr(i) for i in range(128))
    assert batch_to_text(engine.Batch.from_list([every_ascii, "", "z"])) == [every_ascii, "", "z"]
    assert batch_to_text(engine.Batch.from_list(["a\nb", "\x00", "é"])) == ["a\nb", "\x00", "é"]
    # UTF-8 with every ASCII byte present: no separator is free, record by record
    assert batch_to_text(engine.Batch.from_list([every_ascii, "é"])) == [every_ascii, "é"]
    b = engine.Batch.from_list([b"xx", b"abc", b"def"])
    assert batch_to_text(b.take([2, 1])) == ["def", "abc"]  # offsets not starting at 0
    assert batch_to_text(engine.Batch.from_list([])) == []
    with pytest.raises(engine.InvalidArgument, match="UTF-8") as e:
        batch_to_text(engine.Batch.from_list([b"secret\xff\xfe"]))
    assert "secret" not in str(e.value)


def test_ascii_strings_rejects_bad_buffers_before_reading():
    from engine import _native

    data = np.frombuffer(b"abcdef", np.uint8)
    for offsets in ([0, 7], [3, 2], [-1, 2], [0, 2, 1]):
        with pytest.raises(ValueError, match="offsets"):
            _native.ascii_strings(data, np.array(offsets, np.int64))
    with pytest.raises(ValueError, match="offsets"):
        _native.ascii_strings(data, np.zeros(0, np.int64))
    for wrong in (np.zeros(3, np.int32), np.array([0, 0, 3, 0], np.int32),  # 16 bytes, not int64
                  np.zeros(2, np.float64), np.zeros((2, 2), np.int64), bytes(16),
                  np.zeros(3, np.int64).view(np.uint8)[1:17]):  # misaligned
        with pytest.raises(ValueError, match="offsets"):
            _native.ascii_strings(data, wrong)
    with pytest.raises(TypeError, match="bytes-like"):
        _native.ascii_strings("abc", np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="C-contiguous buffer"):
        _native.ascii_strings(data, np.arange(4, dtype=np.int64)[::2])
    with pytest.raises(ValueError, match="ASCII"):
        _native.ascii_strings(np.frombuffer("é".encode(), np.uint8), np.array([0, 2], np.int64))
    assert _native.ascii_strings(data, np.array([1, 1, 4], np.int64)) == ["", "bcd"]


def test_field_values_and_with_field():
    from engine.records import field_values, with_field

    class Sub(dict):
        pass

    records = [{"id": 1, "ssn": "a"}, {"id": 2}, Sub(id=3, ssn=None), {"ssn": b"x"}]
    assert field_values(records, "ssn") == ["a", None, None, b"x"]
    assert field_values((), "ssn") == []
    out = with_field(records, "ssn", ["A", None, None, "X"])
    assert out == [{"id": 1, "ssn": "A"}, {"id": 2}, {"id": 3, "ssn": None}, {"ssn": "X"}]
    assert all(type(r) is dict for r in out)  # copies are plain dicts, as dict.copy makes
    assert records[0] == {"id": 1, "ssn": "a"} and records[1] == {"id": 2}  # inputs untouched
    assert all(o is not r for o, r in zip(out, records))
    with pytest.raises(engine.InvalidArgumentType, match="record 1 is a list"):
        field_values([{}, ["ssn"]], "ssn")
    with pytest.raises(engine.InvalidArgumentType, match="record 0 is a str"):
        with_field(["x"], "ssn", ["A"])
    with pytest.raises(engine.InvalidArgumentType):
        field_values(42, "ssn")
    with pytest.raises(engine.InvalidArgument, match="one item per record"):
        with_field([{}, {}], "ssn", ["A"])
    with pytest.raises(TypeError):  # an unhashable field name: dict's own error
        field_values([{}], ["ssn"])


def test_object_helpers_keep_reference_counts_balanced():
    import sys

    from engine.records import field_values, with_field

    value, token = "v" * 40, "t" * 40
    records = [{"ssn": value} for _ in range(100)]
    before = (sys.getrefcount(value), sys.getrefcount(token), sys.getrefcount(records[0]))
    for _ in range(10):
        field_values(records, "ssn")
        with_field(records, "ssn", [token] * 100)
    assert (sys.getrefcount(value), sys.getrefcount(token), sys.getrefcount(records[0])) == before
    got = with_field(records, "ssn", [token] * 100)
    assert sys.getrefcount(token) == before[1] + 100
    del got
    assert sys.getrefcount(token) == before[1]


def test_with_field_leaves_the_collector_alone_and_copies_collectable():
    import gc
    import weakref

    from engine.records import with_field

    for enabled in (False, True):
        (gc.enable if enabled else gc.disable)()
        with_field([{"a": 1}] * 3000, "x", [[]] * 3000)
        assert gc.isenabled() is enabled
    gc.enable()

    class Node:
        pass

    node = Node()
    out = with_field([{"a": 1}], "x", [node])
    assert gc.is_tracked(out[0])  # tracked again once the list is built
    node.back = out[0]  # a cycle through the new dict
    ref = weakref.ref(node)
    del out, node
    gc.collect()
    assert ref() is None


def test_dict_subclasses_are_read_through_their_own_methods():
    from engine.records import field_values, with_field

    class Caseless(dict):
        def get(self, k, default=None):
            return dict.get(self, k.lower(), default)

        def __contains__(self, k):
            return dict.__contains__(self, k.lower())

    rec = Caseless(ssn="123")
    assert field_values([rec, {"SSN": "x"}], "SSN") == ["123", "x"]
    assert with_field([rec], "SSN", [None]) == [{"ssn": "123", "SSN": None}]
    assert with_field([{"a": 1}], "SSN", [None]) == [{"a": 1}]


def test_errors_of_the_callers_objects_pass_through_unchanged():
    from engine.records import field_values, with_field

    class Boom(Exception):
        pass

    class Key:
        def __hash__(self):
            return hash("ssn")

        def __eq__(self, other):
            raise Boom()

    with pytest.raises(Boom):
        field_values([{Key(): 1}], "ssn")
    with pytest.raises(Boom):
        with_field([{Key(): 1}], "ssn", ["x"])
    with pytest.raises(TypeError) as e:  # dict's own error for an unhashable field
        field_values([{}], ["ssn"])
    assert not isinstance(e.value, engine.InvalidArgumentType)


def test_value_kinds():
    from engine.records import BYTES_VALUES, NONE_VALUES, OTHER_VALUES, STR_VALUES, value_kinds

    assert value_kinds([]) == 0
    assert value_kinds(["a", None]) == STR_VALUES | NONE_VALUES
    assert value_kinds((b"a", bytearray(b"b"), memoryview(b"c"))) == BYTES_VALUES
    assert value_kinds(["a", b"b", 3, None]) == STR_VALUES | BYTES_VALUES | OTHER_VALUES | NONE_VALUES
    with pytest.raises(engine.InvalidArgumentType):
        value_kinds(iter(["a"]))


def test_the_collector_pause_is_never_visible_to_python_code():
    import gc
    import threading

    from engine.records import with_field

    seen = []

    class Row(dict):  # Python code runs while this record is copied
        def __iter__(self):
            return iter(list(dict.keys(self)))

        def keys(self):
            seen.append(gc.isenabled())
            return dict.keys(self)

    gc.enable()
    with_field([{"a": 1}] * 2000 + [Row(a=2)] + [{"a": 3}] * 2000, "a", [0] * 4001)
    assert seen == [True] and gc.isenabled()

    # another thread that disables the collector while the loop runs its code keeps it disabled
    inside, done = threading.Event(), threading.Event()

    class Slow(dict):
        def __iter__(self):
            return iter(list(dict.keys(self)))

        def keys(self):
            inside.set()
            done.wait(5)
            return dict.keys(self)

    def other():
        inside.wait(5)
        seen.append(gc.isenabled())
        gc.disable()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    try:
        with_field([Slow(a=1)], "a", [0])
        t.join()
        assert seen[1:] == [True] and not gc.isenabled()
    finally:
        gc.enable()


def test_the_c_packer_survives_a_list_changed_between_its_two_calls():
    """packed_size and pack_into are two calls: whatever runs in between (a gc callback, another
    thread) may change the list; pack_into then fails cleanly or packs what is there, and never
    writes outside its buffer."""
    import gc

    from engine import _native

    values = ["é" * 10, b"x" * 10, "abc"] * 300
    size = _native.packed_size(values)
    guard = np.full(size + 64, 0x5A, np.uint8)
    out = guard[:size]

    def empty(phase, info):
        values.clear()

    gc.callbacks.append(empty)
    gc.set_threshold(1)
    try:
        gc.collect()
    finally:
        gc.set_threshold(700)
        gc.callbacks.remove(empty)
    with pytest.raises(RuntimeError, match="changed"):
        _native.pack_into(values, out)  # now empty: 0 bytes for a buffer of `size`
    grown = ["é" * 10, b"x" * 10, "abc"] * 400
    with pytest.raises(RuntimeError, match="changed"):
        _native.pack_into(grown, out)  # more than the buffer holds: refused, not overrun
    assert (guard[size:] == 0x5A).all()
    with pytest.raises(engine.InvalidArgumentType, match="record 1"):
        _native.pack_into(["a", 5], np.empty(2, np.uint8))
    with pytest.raises(engine.InvalidArgument, match="writable"):
        _native.pack_into(["a"], b"x")
