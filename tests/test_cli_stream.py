"""`crypto-engine encrypt/decrypt`: files and pipes, exit codes, and no output left behind by a
failure, Ctrl-C or SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine import stream


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "ENCRYPTION_MASTER_KEY": "cli-stream-master-key-0123456789-abcdef", "VAULT_ENABLED": "false",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys" / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000"}


def cli(*args, env, stdin=None, input=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          timeout=300, env=env, stdin=stdin, input=input)


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    (tmp_path / "keys").mkdir()
    return d


def test_files_and_pipes_round_trip(env, work):
    data = os.urandom(3 * 16384 + 5)
    (work / "in.bin").write_bytes(data)
    r = cli("encrypt", str(work / "in.bin"), str(work / "out.enc"), "--context", "batch 7", "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plaintext_bytes"] == len(data) and report["key_version"] == 1
    blob = (work / "out.enc").read_bytes()
    assert stream.read_file_header(blob) == 1 and len(blob) == 9 + 56 + len(data) + 4 * 16
    r = cli("decrypt", "-", "-", "--context", "batch 7", "--json", env=env, input=blob)
    assert r.returncode == 0 and r.stdout == data and json.loads(r.stderr)["operation"] == "decrypt"
    r = cli("encrypt", "-", "-", env=env, input=data)
    assert r.returncode == 0
    r = cli("decrypt", "-", str(work / "back.bin"), env=env, input=r.stdout)
    assert r.returncode == 0 and (work / "back.bin").read_bytes() == data
    assert sorted(p.name for p in work.iterdir()) == ["back.bin", "in.bin", "out.enc"]


def test_bad_input_exit_codes_and_nothing_left(env, work):
    data = os.urandom(2 * 16384 + 100)
    (work / "in.bin").write_bytes(data)
    assert cli("encrypt", str(work / "in.bin"), str(work / "ok.enc"), env=env).returncode == 0
    blob = (work / "ok.enc").read_bytes()
    flipped = bytearray(blob)
    flipped[9 + 56 + 16400 + 3] ^= 1  # inside chunk 1: chunk 0 is fine
    # content, exit code, the authenticated prefix that stdout may receive
    cases = {"truncated": (blob[:-20], 1, data[:2 * 16384]),
             "flipped": (bytes(flipped), 1, data[:16384]),
             "trailing": (blob + b"junk", 1, data[:2 * 16384]),
             "not ours": (b"hello world" * 10, 1, b""),
             "unknown version": (blob[:5] + (42).to_bytes(4, "big") + blob[9:], 3, b"")}
    for name, (content, code, prefix) in cases.items():
        (work / "bad.enc").write_bytes(content)
        r = cli("decrypt", str(work / "bad.enc"), str(work / "plain.bin"), env=env)
        assert r.returncode == code, (name, r.stderr)
        assert not (work / "plain.bin").exists(), name
        assert sorted(p.name for p in work.iterdir()) == ["bad.enc", "in.bin", "ok.enc"], name
        r = cli("decrypt", "-", "-", env=env, input=content)  # stdout: authenticated chunks only
        assert r.returncode == code and r.stdout == prefix, name
    assert cli("decrypt", str(work / "ok.enc"), str(work / "p"), "--context", "x", env=env).returncode == 1
    assert cli("decrypt", str(work / "missing"), str(work / "p"), env=env).returncode == 5
    assert cli("encrypt", str(work / "in.bin"), str(work), env=env).returncode == 2
    r = cli("decrypt", str(work / "ok.enc"), str(work / "p"), env={**env, "ENCRYPTION_MASTER_KEY": "hunter2hunter2"})
    assert r.returncode == 3 and "hunter2" not in r.stderr.decode()
    assert not (work / "p").exists()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_interrupted_leaves_no_output(env, work, how, command):
    """Half the input arrives through a pipe, then the process is interrupted or killed."""
    if command == "decrypt":
        (work / "in.bin").write_bytes(os.urandom(3 * 2**20))
        assert cli("encrypt", str(work / "in.bin"), str(work / "src"), env=env).returncode == 0
        (work / "in.bin").unlink()
        payload = (work / "src").read_bytes()
    else:
        payload = os.urandom(3 * 2**20)
    before = sorted(p.name for p in work.iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "engine", command, "-", str(work / "out")],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(payload[:len(payload) // 2])
    proc.stdin.flush()
    time.sleep(1.5)  # let it read and process what it was given
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), err
    assert sorted(p.name for p in work.iterdir()) == before


def _wait_until_engine_loads(pid: int, timeout: float = 60.0) -> bool:
    """Waits until the child has mapped the engine's native module (it is importing the engine,
    past the interpreter's own start-up); False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "engine/_native/_ffi" in f.read():
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return False
        time.sleep(0.0005)
    return False


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_sigint_at_any_moment_leaves_no_output_or_a_complete_one(env, work, command):
    """SIGINT at moments spread from the engine's import to after the process ended: always
    exit 130, one line and no file, or exit 0 and a complete file that decrypts; never a
    traceback, never a temporary left behind, never death by the signal."""
    data = os.urandom(2**20 + 777)
    (work / "plain").write_bytes(data)
    assert cli("encrypt", str(work / "plain"), str(work / "sealed"), env=env).returncode == 0
    src = work / ("plain" if command == "encrypt" else "sealed")
    out = work / "out"
    before = sorted(p.name for p in work.iterdir())

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "engine", command, str(src), str(out)],
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        loaded = _wait_until_engine_loads(proc.pid)
        return proc, loaded, time.monotonic()

    # how long a run takes from the engine's import to its end, here and now
    proc, _, t0 = start()
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    span = time.monotonic() - t0
    out.unlink()
    outcomes = {0: 0, 130: 0}
    runs = 20
    # Spread over the measured span, the last ones after its end; a loaded machine can make
    # later runs slower than the measured one, so runs go on with ever later signals until one
    # has finished first (each run checks the same property).
    delays = [1.3 * span * i / (runs - 1) for i in range(runs)] + [span * 2 ** k for k in range(1, 8)]
    for i, delay in enumerate(delays):
        if i >= runs and outcomes[0]:
            break
        proc, loaded, t0 = start()
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
        _, err = proc.communicate(timeout=120)
        text = err.decode(errors="replace")
        assert "Traceback" not in text and "Exception ignored" not in text, (i, delay, text)
        assert proc.returncode in (0, 130), (i, delay, proc.returncode, text)
        if proc.returncode == 130:
            assert not out.exists(), (i, delay)
            assert len(text.strip().splitlines()) == 1 and "interrupted" in text, text
        elif command == "encrypt":
            r = cli("decrypt", str(out), "-", env=env)
            assert r.returncode == 0 and r.stdout == data, (i, delay)
        else:
            assert out.read_bytes() == data, (i, delay)
        if out.exists():
            out.unlink()
        assert sorted(p.name for p in work.iterdir()) == before, (i, delay)
        outcomes[proc.returncode] += 1
    assert outcomes[0] and outcomes[130], outcomes


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_sigint_once_the_output_is_in_place_changes_nothing(env, work, command):
    """The moment the file appears the work is done: SIGINT then (during the report, at
    interpreter exit) must neither kill the process nor turn its exit code into 130."""
    data = os.urandom(300_000)
    (work / "plain").write_bytes(data)
    assert cli("encrypt", str(work / "plain"), str(work / "sealed"), env=env).returncode == 0
    src = work / ("plain" if command == "encrypt" else "sealed")
    out = work / "out"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "engine", command, str(src), str(out),
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        while not out.exists() and proc.poll() is None:
            time.sleep(0.0002)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and b"Traceback" not in err, (proc.returncode, err)
        assert json.loads(stdout)["plaintext_bytes"] == len(data)
        out.unlink()


def test_closed_and_broken_standard_streams(env, work):
    """A reader that goes away (| head), a stdout or stderr the process was started without:
    one line, exit 5 (or the command's own code), no traceback, and no message in the data."""
    data = os.urandom(3 * 2**20)
    (work / "plain").write_bytes(data)
    assert cli("encrypt", str(work / "plain"), str(work / "sealed"), env=env).returncode == 0
    for command, src in (("decrypt", "sealed"), ("encrypt", "plain")):
        proc = subprocess.Popen([sys.executable, "-m", "engine", command, str(work / src), "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert len(proc.stdout.read(100)) == 100
        proc.stdout.close()  # the reader has what it wanted
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 5, err
        assert err.strip().splitlines() == ["crypto-engine: [Errno 32] Broken pipe"], err

    def closing(fd):
        return lambda: os.close(fd)

    r = subprocess.run([sys.executable, "-m", "engine", "decrypt", str(work / "sealed"), "-"],
                       stderr=subprocess.PIPE, env=env, preexec_fn=closing(1), timeout=120)
    assert r.returncode == 5 and r.stderr.decode().strip() == "crypto-engine: [Errno 9] stdout is closed"
    r = subprocess.run([sys.executable, "-m", "engine", "encrypt", "-", str(work / "x")],
                       stderr=subprocess.PIPE, env=env, preexec_fn=closing(0), timeout=120)
    assert r.returncode == 5 and b"stdin is closed" in r.stderr and not (work / "x").exists()
    # without stderr, a failure is the exit code alone: nothing goes into the data on stdout
    (work / "short").write_bytes((work / "sealed").read_bytes()[:-100])
    r = subprocess.run([sys.executable, "-m", "engine", "decrypt", str(work / "short"), "-"],
                       stdout=subprocess.PIPE, env=env, preexec_fn=closing(2), timeout=120)
    assert r.returncode == 1 and data.startswith(r.stdout) and b"crypto-engine" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "engine", "encrypt", str(work / "plain"),
                        str(work / "y")], stdout=subprocess.PIPE, env=env,
                       preexec_fn=closing(2), timeout=120)
    assert r.returncode == 0 and (work / "y").exists()
