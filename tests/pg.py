"""A throwaway PostgreSQL cluster with pgSphere for the test session.

``initdb`` into a fresh temporary directory, ``pg_ctl start`` on 127.0.0.1 at a free port
(and a unix socket in that directory), ``CREATE EXTENSION pg_sphere`` in ``template1`` and
``postgres`` (so every database made with :meth:`PgCluster.create_database` has it),
``pg_ctl stop`` and removal at the end of the session. The server binaries are found
through ``$ROMEREA_VO_PG_BINDIR``, ``pg_ctl`` on the PATH, or Debian's
``/usr/lib/postgresql/<version>/bin``. initdb refuses to run as root: as root the cluster
belongs to the ``postgres`` user (Debian's package creates it) or else ``nobody``.

The ``pg_cluster`` fixture skips, saying why, without the binaries, without psycopg or
without the pgSphere extension (``apt-get install postgresql postgresql-15-pgsphere``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install postgresql postgresql-15-pgsphere"
_SERVER_OPTIONS = (
    # A test cluster: durability is not wanted, speed and little memory are.
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c shared_buffers=32MB -c max_connections=40 "
    # JIT compiling the long expressions of polygon geometry costs ~0.5 s a query, more
    # than running them; a TAP deployment wants it off too.
    "-c jit=off"
)


class PgUnavailable(Exception):
    """PostgreSQL with pgSphere cannot be run here; the message says why."""


def find_bindir() -> Path | None:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates = []
    if os.environ.get("ROMEREA_VO_PG_BINDIR"):
        candidates.append(Path(os.environ["ROMEREA_VO_PG_BINDIR"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    for d in candidates:
        if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """A running throwaway cluster. ``conninfo(dbname)`` is a libpq connection string
    (TCP on 127.0.0.1, trust authentication, superuser ``postgres``)."""

    def __init__(self, root: Path, bindir: Path, port: int, owner: pwd.struct_passwd | None):
        self.root = root
        self.data = root / "data"
        self.bindir = bindir
        self.port = port
        self.owner = owner  # the account the server runs as, when we are root
        self.user = "postgres"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def connect(self, dbname: str = "postgres", **kw):
        """A psycopg connection (autocommit unless told otherwise)."""
        import psycopg

        kw.setdefault("autocommit", True)
        return psycopg.connect(self.conninfo(dbname), **kw)

    def create_database(self, name: str) -> str:
        """A new database (with pg_sphere, from template1); returns its conninfo."""
        with self.connect() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a server binary as the cluster's owner."""
        kw = {}
        if self.owner is not None:
            kw = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            **kw,
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} {_SERVER_OPTIONS}"
        self.run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.log), "-o", options)

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        done = self.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), check=False)
        if done.returncode != 0:
            self.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data), check=False)


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PgUnavailable("running as root and neither a 'postgres' nor a 'nobody' account exists")


@contextlib.contextmanager
def pg_cluster_running() -> Iterator[PgCluster]:
    """Start a cluster with pgSphere; stop and remove it afterwards. Raises
    :class:`PgUnavailable` when that cannot be done here."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailable(f"PostgreSQL server binaries not found ({INSTALL_HINT})")
    owner = _owner()
    # Not under pytest's 0700 tmp dirs: the server's account must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="romerea-vo-pg-"))
    cluster = None
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = PgCluster(root, bindir, 0, owner)
        init = cluster.run(
            "initdb", "-D", str(cluster.data), "-U", cluster.user, "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync", check=False,
        )  # fmt: skip
        if init.returncode != 0:
            raise PgUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        for attempt in range(3):  # another process may take the free port first
            cluster.port = _free_port()
            try:
                cluster.start()
                break
            except subprocess.CalledProcessError as exc:
                if attempt == 2:
                    log = cluster.log.read_text() if cluster.log.exists() else ""
                    raise PgUnavailable(f"pg_ctl start failed: {exc.stderr}\n{log}") from None
        with cluster.connect() as con:
            available = con.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_sphere'"
            ).fetchone()
            if available is None:
                raise PgUnavailable(f"the pg_sphere extension is not installed ({INSTALL_HINT})")
            con.execute("CREATE EXTENSION pg_sphere")
        with cluster.connect("template1") as con:
            con.execute("CREATE EXTENSION pg_sphere")
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture() -> Iterator[PgCluster]:
    """A PostgreSQL cluster with pgSphere for the session (skips when unavailable)."""
    try:
        with pg_cluster_running() as cluster:
            yield cluster
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL with pgSphere unavailable: {exc}")
