"""A throwaway PostgreSQL server for tests and benchmarks, from the system's own binaries.

:meth:`PostgresServer.start` runs ``initdb`` in a fresh temporary directory, then ``pg_ctl start``
with the server listening on 127.0.0.1 only, on a free port, with its Unix socket inside that
directory. ``initdb`` and ``postgres`` refuse to run as root, so when this process is root they
run as an unprivileged user (``postgres`` when the Debian package created it, else ``nobody``)
that owns the directory. Connections need the superuser ``engine`` and a random password
(SCRAM); :attr:`PostgresServer.url` carries both. :meth:`PostgresServer.stop` stops the server
(fast shutdown, then SIGKILL if it lingers) and removes the directory.

Standard library only: the test suite and the benchmarks share it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["PostgresNotFound", "PostgresServer", "PostgresStartError", "find_pg_bin", "free_port"]

PG_BIN_ENV = "PG_BIN"
START_TIMEOUT = 60.0
SUPERUSER = "engine"
_INSTALL_HINT = (
    "install Debian's `postgresql` package (`make system-deps` does), or point "
    f"${PG_BIN_ENV} at the directory that holds initdb and pg_ctl"
)


class PostgresNotFound(RuntimeError):
    """``initdb``/``pg_ctl`` were not found; the message says how to install them."""


class PostgresStartError(RuntimeError):
    """The server did not initialise or start in time (the message has its log's tail)."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``.

    Looks at ``$PG_BIN``, then ``pg_config --bindir``, then Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version first), then ``PATH``.

    Raises:
        PostgresNotFound: none of those has both programs.
    """
    def usable(d: str) -> bool:
        return bool(d) and all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "pg_ctl"))

    explicit = os.environ.get(PG_BIN_ENV)
    if explicit:
        if usable(explicit):
            return Path(explicit)
        raise PostgresNotFound(f"${PG_BIN_ENV}={explicit!r} does not hold initdb and pg_ctl")
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                             text=True, timeout=10, check=True).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for d in candidates:
        if usable(d):
            return Path(d)
    raise PostgresNotFound(f"PostgreSQL's initdb and pg_ctl were not found; {_INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresStartError("running as root, and neither a 'postgres' nor a 'nobody' account "
                             "exists to run PostgreSQL as")


class PostgresServer:
    """A PostgreSQL server in a temporary directory.

    Args:
        settings: extra server settings (``-c name=value``), e.g. ``{"fsync": "off"}`` for a
            test that does not care about surviving a power cut.
        base_dir: where to make the temporary directory (default: the system's).
    """

    def __init__(self, settings: Mapping[str, str] | None = None, *,
                 base_dir: str | os.PathLike[str] | None = None) -> None:
        self.settings = dict(settings or {})
        self.base_dir = base_dir
        self.port: int | None = None
        self.password = secrets.token_urlsafe(24)
        self.dir: Path | None = None
        self._bin: Path | None = None
        self._user: pwd.struct_passwd | None = None

    def __repr__(self) -> str:
        return f"<PostgresServer port={self.port} dir={self.dir}>"

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "the server is not started"
        return self.dir / "data"

    @property
    def url(self) -> str:
        """``postgresql://engine:<password>@127.0.0.1:<port>/postgres``."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """The URL of another database on this server."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        if self._bin is None:
            raise PostgresStartError("the server was not started")
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run([str(self._bin / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=self.dir, **kwargs)

    def start(self) -> "PostgresServer":
        """Initialises and starts the server; returns ``self``.

        Raises:
            PostgresNotFound: the binaries are missing.
            PostgresStartError: initdb or the server failed (the message has the log's tail).
        """
        self._bin = find_pg_bin()
        self._user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="engine-pg-", dir=self.base_dir))
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        assert self.dir is not None
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(self.dir, 0o700)
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        done = self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER,
                         f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        if done.returncode != 0:
            raise PostgresStartError(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _start_server(self) -> None:
        assert self.dir is not None
        log = self.dir / "server.log"
        for _attempt in range(5):
            self.port = free_port()
            options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                       f"-c unix_socket_directories={self.dir}"]
            options += [f"-c {k}={v}" for k, v in self.settings.items()]
            done = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(log), "-w",
                             "-t", str(int(START_TIMEOUT)), "-o", " ".join(options),
                             timeout=START_TIMEOUT + 10)
            if done.returncode == 0 and self._answers():
                return
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            if "could not bind" not in tail and "in use" not in tail:
                raise PostgresStartError(f"PostgreSQL did not start:\n{done.stderr}{tail}")
        raise PostgresStartError("PostgreSQL found no free port in five attempts")

    def _answers(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stops the server (fast shutdown; SIGKILL after 30 s) and removes its directory."""
        if self.dir is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists() and self._bin is not None:
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                          "-t", "30", timeout=40)
            except subprocess.TimeoutExpired:
                pass
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
