"""No input crashes the interpreter: hostile calls run in a child process that must exit cleanly,
and in-place sealing of 1 GiB allocates no second GiB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HOSTILE = textwrap.dedent(
    r"""
    import os, random, numpy as np, engine
    rnd = random.Random(1234)
    a = engine.AesGcm(os.urandom(32))
    values = [None, 0, -1, 2**70, 1.5, "str", b"", b"x" * 7, b"x" * 129, bytearray(3),
              memoryview(b"abc")[::2], np.zeros(10, np.uint8)[::3], np.zeros((2, 3), np.uint8),
              np.zeros(0, np.uint8), [], [b"a", None], object(), os.urandom(16), os.urandom(40)]
    outcomes = set()
    def attempt(fn, *args, **kw):
        try:
            fn(*args, **kw)
            outcomes.add("ok")
        except engine.EngineError as e:
            outcomes.add(type(e).__name__)
        except (TypeError, ValueError, IndexError) as e:
            outcomes.add("plain:" + type(e).__name__)
    for _ in range(4000):
        x, y, z = (rnd.choice(values) for _ in range(3))
        attempt(a.encrypt, x, y, z)
        attempt(a.decrypt, x, y, z)
        attempt(engine.AesGcm, x)
        attempt(engine.Batch, x, y)
        attempt(engine.Batch, b"0123456789", rnd.choice([[0, 5, 3], [0, 11], [3, 2], [0, 2**62], [-5, 0], [0, 10]]))
        attempt(a.seal_batch, rnd.choice([[b"a"], [b"a", b"b"], x, y]), z, threads=rnd.choice([1, 2, None, 0]))
        attempt(a.seal_batch_into, [b"ab", b"c"], rnd.choice([bytearray(2), bytearray(3), b"abc", x]))
        attempt(engine.SealedBatch, nonces=x, tags=y, ciphertexts=z)
        one = engine.SealedBatch(nonces=np.zeros((1, 16), np.uint8), tags=np.zeros((1, 16), np.uint8),
                                 ciphertexts=[rnd.choice([b"", b"abc"])])
        attempt(a.open_batch, one, rnd.choice([None, b"x", [b"x"], [b"x", b"y"]]))
    print(sorted(outcomes))
    """
)


def test_hostile_inputs_raise_typed_errors_and_never_crash():
    proc = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child's repr of a list
    assert "ok" in seen and "InvalidArgument" in seen and "InvalidArgumentType" in seen
    assert "InvalidTag" in seen or "BatchInvalidTag" in seen
    # Argument errors are the engine's own, never a bare TypeError/ValueError from deep inside.
    assert not [s for s in seen if s.startswith("plain:") and s != "plain:IndexError"], seen


IN_PLACE = textwrap.dedent(
    r"""
    import json, resource, numpy as np, engine
    n = 1 << 30
    buf = np.zeros(n, dtype=np.uint8)
    buf[::4096] = 1  # touch every page before measuring
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    a = engine.AesGcm(engine.AesGcm.generate_key())
    batch = engine.Batch(buf, np.arange(0, n + 1, 1 << 20, dtype=np.int64))
    sealed = a.seal_batch_into(batch, buf)
    opened = a.open_batch_into(sealed, buf)
    ok = bool(buf[0] == 1 and buf[1] == 0 and buf[4096] == 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "peak": peak, "ok": ok}))
    """
)


@pytest.mark.measures_memory
def test_sealing_one_gib_in_place_allocates_no_second_gib():
    proc = subprocess.run([sys.executable, "-c", IN_PLACE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ok"]
    assert r["peak"] - r["base"] < 64 << 20, r  # nonces, tags and offsets only: ~1 MiB here


REVIEW_CASES = textwrap.dedent(
    r"""
    import numpy as np, pyarrow as pa, engine
    from engine.codecs import scatter
    a = engine.AesGcm(engine.AesGcm.generate_key())
    results = []
    def expect(exc, fn):
        try:
            fn()
            results.append("no error")
        except exc:
            results.append("ok")
    # starts + lengths that wrap around in int64
    b = engine.Batch(b"abcdef", [0, 6])
    expect(ValueError, lambda: b.slices(np.array([2**63 - 1]), np.array([1])))
    tokens = a.seal_tokens([b"x" * 64], b"HDR")
    expect(ValueError, lambda: a.open_tokens(tokens, 3, out=np.zeros(64, np.uint8),
                                             out_starts=np.array([2**63 - 1])))
    # a sealed batch's columns cannot be swapped for smaller ones after it was checked
    sb = a.seal_batch([b""] * 200000)
    expect(AttributeError, lambda: setattr(sb, "tags", np.zeros((1, 16), np.uint8)))
    # arrow offsets changed after the batch was built do not reach native code
    off = np.array([0, 4], dtype=np.int64)
    data = np.frombuffer(b"abcd", np.uint8)
    arr = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(off), pa.py_buffer(data)])
    batch = engine.Batch.from_arrow(arr)
    off[:] = [1 << 40, (1 << 40) + 4]
    results.append("ok" if a.open_batch(a.seal_batch(batch)).to_list() == [b"abcd"] else "wrong")
    # scatter refuses read-only targets and starts outside the target
    expect(ValueError, lambda: scatter(b"immutable-bytes", [np.array([0])], [engine.Batch(b"XXXX", [0, 4])]))
    expect(ValueError, lambda: scatter(bytearray(8), [np.array([1 << 40])], [engine.Batch(b"XXXX", [0, 4])]))
    # out-of-range sizes are typed errors, not OverflowError from cffi
    expect(ValueError, lambda: a.open_tokens(tokens, -1))
    expect(ValueError, lambda: a.seal_batch([b"x"], threads=2**40))
    print(results)
    """
)


def test_review_findings_are_typed_errors_not_crashes():
    proc = subprocess.run([sys.executable, "-c", REVIEW_CASES], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert eval(proc.stdout.strip().splitlines()[-1]) == ["ok"] * 8  # noqa: S307


def test_dropping_an_aesgcm_frees_its_native_key_without_the_cycle_collector():
    import gc
    import weakref

    import engine

    gc.disable()
    try:
        a = engine.AesGcm(engine.AesGcm.generate_key())
        a.encrypt(bytes(16), b"x")
        handle = weakref.ref(a._key)
        del a
        assert handle() is None  # freed (and its key schedule wiped) at once
    finally:
        gc.enable()


# Python code that runs inside the C loops of engine._native._objects (a key's __eq__ on a hash
# collision, a field's __hash__, a dict subclass's keys(), a gc callback) mutates what the loop
# walks; each case must end in a clean exception or a correct result, never a crash.
OBJECT_LOOP_CASES = textwrap.dedent(
    """
    import gc
    from engine import Batch, InvalidArgument
    from engine.codecs import batch_to_text
    from engine.records import field_values, with_field

    results = []

    def outcome(fn):
        try:
            fn()
            return "returned"
        except (RuntimeError, TypeError, ValueError) as e:
            return type(e).__name__

    records = [{"a": i} for i in range(1000)]
    class Field:
        def __hash__(self):
            records.clear()
            return 1
        def __eq__(self, other):
            return False
    results.append(outcome(lambda: field_values(records, Field())))

    def colliding(clear):
        class Key:
            def __hash__(self):
                return hash("name")
            def __eq__(self, other):
                clear()
                return False
        return Key

    records = []
    records += [{colliding(records.clear)(): 0} for _ in range(100)]
    results.append(outcome(lambda: field_values(records, "name")))
    values = [object() for _ in range(100)]
    records = [{colliding(values.clear)(): 0} for _ in range(100)]
    results.append(outcome(lambda: with_field(records, "name", values)))
    records = []
    records += [{colliding(records.clear)(): 0} for _ in range(100)]
    results.append(outcome(lambda: with_field(records, "name", [None] * 100)))

    class D(dict):
        def __iter__(self):
            return dict.__iter__(self)
        def keys(self):
            records.clear()
            return dict.keys(self)
    records = [D(a=i) for i in range(100)]
    results.append(outcome(lambda: with_field(records, "name", list(range(100)))))

    # the half-built result list is not reachable through the collector
    N = 4321
    class Peek:
        def __hash__(self):
            return hash("name")
        def __eq__(self, other):
            for o in gc.get_objects():
                if type(o) is list and len(o) == N and o is not records:
                    o[-1]
            return False
    records = [{Peek(): 0}] + [{"a": i} for i in range(N - 1)]
    results.append(outcome(lambda: field_values(records, "name")))
    results.append(outcome(lambda: with_field(records, "name", [1] * N)))
    results.append(gc.isenabled())

    # a gc callback rewriting the caller's buffer under batch_to_text: never a broken str
    data = bytearray(b"hello world!")
    batch = Batch(data, [0, 5, 12])
    def rewrite(phase, info):
        if phase == "start":
            data[1] = 0xE9
    gc.callbacks.append(rewrite)
    keep = [[] for _ in range(200)]
    gc.set_threshold(1)
    try:
        texts = batch_to_text(batch)
    except InvalidArgument:
        texts = None
    gc.set_threshold(700)
    gc.callbacks.clear()
    results.append(texts is None or all(t.encode().decode() == t for t in texts))
    print(results)
    """
)


def test_python_code_inside_the_object_loops_cannot_crash_them():
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", OBJECT_LOOP_CASES],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307
    assert got[:5] == ["RuntimeError"] * 5
    assert got[5:] == ["returned", "returned", True, True]
