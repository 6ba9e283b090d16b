"""Several service workers sharing a UWS job store in PostgreSQL: real processes, real HTTP.

``romerea-vo serve --workers 2 --job-threads 1`` runs as a subprocess over the ``tap_db``
DuckDB file, with its jobs in a database of the session's PostgreSQL cluster (the tests
skip, saying why, when PostgreSQL cannot run here). One job thread per worker makes
the scheduling observable: two slow jobs occupy both workers, a third stays QUEUED.
Every request is made on a new connection, so uvicorn spreads them over the workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
# Each slow query would run for hours; every test aborts or kills it within seconds.
SLOW = (
    "SELECT COUNT(*) AS n FROM rome.field_index AS a1, rome.field_index AS a2, "
    "rome.field_index AS a3 WHERE SIN(a1.ra * a2.dec * a3.ra) > 2"
)
FAST = "SELECT field, COUNT(*) AS n FROM rome.field_index GROUP BY field ORDER BY field"
STOPPED = "the worker executing this job stopped"
PUBLIC = "https://vo.example.org"  # as services/nginx-romerea-vo.conf publishes it


class Service:
    """``romerea-vo serve --workers 2`` as a subprocess in its own process group."""

    def __init__(self, db: Path, work: Path, jobs_db: str, log: Path):
        self.args = [
            sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(db),
            "--workers", "2", "--job-threads", "1", "--jobs-db", jobs_db,
            "--work-dir", str(work), "--port", "0", "--public-url", PUBLIC + "/",
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        out = self.log.open("a")
        offset = out.tell()  # earlier runs' output stays above
        self.proc = subprocess.Popen(
            self.args, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = self.log.read_text()[offset:]
            lines = [ln for ln in text.splitlines() if ln.startswith("TAP service:")]
            if lines:
                self.url = lines[-1].split()[2]
                return
            time.sleep(0.1)
        self.kill()
        raise AssertionError("service did not start:\n" + self.log.read_text()[-3000:])

    def stop(self, terminate: bool = False) -> int:
        """Ctrl-C (SIGINT to the process group), or SIGTERM to the parent alone (what
        systemd's KillMode=mixed does): either way the workers stop cleanly."""
        if terminate:
            os.kill(self.proc.pid, signal.SIGTERM)
        else:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9 the parent and every worker at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="module")
def jobs_db(pg_cluster):
    pg_cluster.create_database("romerea_workers")
    return f"postgresql://{pg_cluster.user}@127.0.0.1:{pg_cluster.port}/romerea_workers"


@pytest.fixture(scope="module")
def service(tap_db, jobs_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    svc = Service(tap_db, root / "work", jobs_db, root / "service.log")
    svc.start()
    yield svc
    if svc.running():
        svc.stop()


@pytest.fixture(scope="module")
def fast_csv(service) -> str:
    """What FAST gives, from the synchronous endpoint."""
    # the first request waits for the workers to finish starting: slow on a busy machine
    r = httpx.post(
        f"{service.url}/sync",
        data={"LANG": "ADQL", "QUERY": FAST, "RESPONSEFORMAT": "csv"},
        timeout=120,
    )
    assert r.status_code == 200 and "ROME-FIELD-01,800\r\n" in r.text, r.text
    return r.text


@pytest.fixture
def live(service, jobs_db):
    """The service, started again if a test left it stopped, with no job left running."""
    if not service.running():
        service.start()
    for (left,) in sql(
        jobs_db, "SELECT job_id FROM romerea_uws.jobs WHERE phase IN ('QUEUED', 'EXECUTING')"
    ):
        abort(f"{service.url}/async/{left}")
    return service


def sql(jobs_db: str, query: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(jobs_db, autocommit=True) as con:
        return con.execute(query, args).fetchall()


def submit(url: str, query: str, run: bool = True, fmt: str = "csv") -> str:
    data = {"LANG": "ADQL", "QUERY": query, "RESPONSEFORMAT": fmt}
    if run:
        data["PHASE"] = "RUN"
    r = httpx.post(f"{url}/async", data=data, timeout=120)
    assert r.status_code == 303, r.text
    return r.headers["location"]


def job_id(job_url: str) -> str:
    return job_url.rsplit("/", 1)[1]


def job(job_url: str, **params) -> ElementTree.Element:
    r = httpx.get(job_url, params=params, timeout=90)
    assert r.status_code == 200, r.text
    return ElementTree.fromstring(r.content)


def phase(doc: ElementTree.Element) -> str:
    return doc.findtext(f"{UWS}phase")


def error_message(doc: ElementTree.Element) -> str:
    return doc.findtext(f"{UWS}errorSummary/{UWS}message")


def finished(job_url: str) -> ElementTree.Element:
    """The job document once the job has left the active phases (blocking WAITs)."""
    for _ in range(9):  # up to three minutes on a busy machine
        doc = job(job_url, WAIT=20)
        if phase(doc) not in ("PENDING", "QUEUED", "EXECUTING"):
            return doc
    raise AssertionError(f"{job_url} is still {phase(doc)}")


def executing(jobs_db: str, job_urls: list[str]) -> dict[str, int]:
    """Wait until the jobs are all EXECUTING; their worker pids from the job table."""
    ids = [job_id(u) for u in job_urls]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = sql(
            jobs_db,
            "SELECT job_id, worker_pid FROM romerea_uws.jobs"
            " WHERE job_id = ANY(%s) AND phase = 'EXECUTING'",
            ids,
        )
        if len(rows) == len(ids):
            return dict(rows)
        time.sleep(0.1)
    raise AssertionError(f"not all of {ids} became EXECUTING: {sql(jobs_db, 'SELECT 1')}")


def phases(jobs_db: str, job_urls: list[str]) -> list[str]:
    rows = dict(
        sql(
            jobs_db,
            "SELECT job_id, phase FROM romerea_uws.jobs WHERE job_id = ANY(%s)",
            [job_id(u) for u in job_urls],
        )
    )
    return [rows.get(job_id(u)) for u in job_urls]


def children(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        ppid = next(ln for ln in text.splitlines() if ln.startswith("PPid:"))
        if int(ppid.split()[1]) == pid:
            found.add(int(status.parent.name))
    return found


def rebase(service: Service, job_urls: list[str]) -> list[str]:
    """The jobs' URLs on a restarted service (it listens on another port)."""
    return [f"{service.url}/async/{job_id(u)}" for u in job_urls]


def gone(pid: int) -> None:
    """Wait until a killed process has exited (reaped, or a zombie whose other threads
    have exited too: its sockets closed).

    The thread-group leader of a killed multi-threaded process turns zombie before its
    other threads have finished exiting, and the descriptors they share stay open until
    the last one has: a connection made in that window is queued on the dying listening
    socket and then reset.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return
        if state in ("Z", "X") and threads == [str(pid)]:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def abort(job_url: str) -> None:
    r = httpx.post(f"{job_url}/phase", data={"PHASE": "ABORT"}, timeout=120)
    assert r.status_code == 303, r.text


def test_jobs_run_in_both_workers_and_any_worker_controls_them(live, jobs_db, fast_csv):
    slow = [submit(live.url, SLOW) for _ in range(2)]
    pids = executing(jobs_db, slow)
    # one job thread each: the two jobs run in two different worker processes of ours
    assert len(set(pids.values())) == 2
    assert set(pids.values()) <= children(live.proc.pid)

    listed = httpx.get(f"{live.url}/async", params={"PHASE": "EXECUTING"}, timeout=120).text
    assert all(job_id(u) in listed for u in slow)
    for u in slow:
        assert httpx.get(f"{u}/phase", timeout=120).text == "EXECUTING"
        assert "SIN(a1.ra" in httpx.get(f"{u}/parameters", timeout=120).text

    # a blocking WAIT on one connection ends when ABORT arrives on another
    woken: dict[str, str] = {}
    waiter = threading.Thread(target=lambda: woken.update(p=phase(job(slow[0], WAIT=60))))
    waiter.start()
    time.sleep(0.5)
    for u in slow:
        abort(u)
    waiter.join(45)
    assert not waiter.is_alive() and woken["p"] == "ABORTED"
    for u in slow:
        doc = finished(u)
        assert phase(doc) == "ABORTED" and error_message(doc) == "job aborted on request"

    # the executing workers interrupted their queries: both job threads are free again
    again = [submit(live.url, SLOW) for _ in range(2)]
    assert len(set(executing(jobs_db, again).values())) == 2
    for u in again:
        abort(u)
    assert [phase(finished(u)) for u in again] == ["ABORTED", "ABORTED"]

    done = submit(live.url, FAST)
    assert phase(finished(done)) == "COMPLETED"
    assert httpx.get(f"{done}/results/result", timeout=120).text == fast_csv


def test_killed_worker_job_becomes_error_and_others_complete(live, jobs_db, fast_csv):
    slow = submit(live.url, SLOW)
    pid = executing(jobs_db, [slow])[job_id(slow)]
    os.kill(pid, signal.SIGKILL)
    # Each worker has its own listening socket (SO_REUSEPORT): a connection the kernel
    # hands to the dying worker before its socket closes is reset (README, "Several
    # workers"). Clients meet that only in that instant; here, ask once it is over.
    gone(pid)

    doc = finished(slow)
    assert phase(doc) == "ERROR" and error_message(doc) == STOPPED
    assert not ElementTree.fromstring(httpx.get(f"{slow}/results", timeout=120).content).findall(
        f"{UWS}result"
    )

    fast = [submit(live.url, FAST) for _ in range(3)]
    for u in fast:
        assert phase(finished(u)) == "COMPLETED"
        assert httpx.get(f"{u}/results/result", timeout=120).text == fast_csv
    assert not sql(jobs_db, "SELECT 1 FROM romerea_uws.jobs WHERE worker_pid = %s"
                   " AND phase = 'EXECUTING'", pid)  # fmt: skip
    # uvicorn replaced the dead worker, which registered itself
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        workers = {p for (p,) in sql(jobs_db, "SELECT pid FROM romerea_uws.workers")}
        if len(workers) == 2 and pid not in workers:
            break
        time.sleep(0.2)
    assert len(workers) == 2 and pid not in workers


def test_clean_stop_requeues_and_restart_runs_queued_jobs(live, jobs_db, fast_csv):
    done = submit(live.url, FAST)
    assert phase(finished(done)) == "COMPLETED"
    body = httpx.get(f"{done}/results/result", timeout=120).content
    slow = [submit(live.url, SLOW) for _ in range(2)]
    executing(jobs_db, slow)
    queued = submit(live.url, FAST)  # both job threads are busy
    pending = submit(live.url, FAST, run=False)
    assert httpx.get(f"{queued}/phase", timeout=120).text == "QUEUED"

    workers = {
        pid
        for pid in children(live.proc.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }
    assert len(workers) == 2
    assert live.stop(terminate=True) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    # the interrupted jobs were queued again; nothing is left EXECUTING or registered
    assert phases(jobs_db, slow + [queued, pending, done]) == [
        "QUEUED", "QUEUED", "QUEUED", "PENDING", "COMPLETED"
    ]  # fmt: skip
    assert not sql(jobs_db, "SELECT 1 FROM romerea_uws.jobs WHERE phase = 'EXECUTING'")
    assert not sql(jobs_db, "SELECT 1 FROM romerea_uws.workers")

    live.start()
    slow = rebase(live, slow)
    queued, pending, done = rebase(live, [queued, pending, done])
    for u in slow:  # they run again (queued first); abort them to free the job threads
        abort(u)
    assert phase(finished(queued)) == "COMPLETED"
    assert httpx.get(f"{queued}/results/result", timeout=120).text == fast_csv
    assert httpx.get(f"{done}/results/result", timeout=120).content == body
    assert httpx.get(f"{pending}/phase", timeout=120).text == "PENDING"
    r = httpx.post(f"{pending}/phase", data={"PHASE": "RUN"}, timeout=120)
    assert r.status_code == 303
    assert phase(finished(pending)) == "COMPLETED"
    assert not sql(jobs_db, "SELECT 1 FROM romerea_uws.jobs WHERE phase = 'EXECUTING'")


def test_killing_every_worker_then_restarting(live, jobs_db, fast_csv):
    done = submit(live.url, FAST)
    assert phase(finished(done)) == "COMPLETED"
    body = httpx.get(f"{done}/results/result", timeout=120).content
    slow = [submit(live.url, SLOW) for _ in range(2)]
    executing(jobs_db, slow)
    queued = submit(live.url, FAST)

    live.kill()
    assert phases(jobs_db, slow + [queued]) == ["EXECUTING", "EXECUTING", "QUEUED"]

    live.start()
    slow = rebase(live, slow)
    queued, done = rebase(live, [queued, done])
    for u in slow:  # found dead at start-up, never run twice
        doc = finished(u)
        assert phase(doc) == "ERROR" and error_message(doc) == STOPPED
    assert phase(finished(queued)) == "COMPLETED"
    assert httpx.get(f"{queued}/results/result", timeout=120).text == fast_csv
    assert httpx.get(f"{done}/results/result", timeout=120).content == body
    assert not sql(jobs_db, "SELECT 1 FROM romerea_uws.jobs WHERE phase = 'EXECUTING'")


def test_urls_follow_the_reverse_proxy_recipe(live, jobs_db):
    # what services/nginx-romerea-vo.conf sends: the public Host and scheme
    proxied = {"Host": "vo.example.org", "X-Forwarded-Proto": "https",
               "X-Forwarded-For": "192.0.2.7"}  # fmt: skip
    query = "SELECT TOP 2 did FROM rome.field_index ORDER BY did"
    r = httpx.post(
        f"{live.url}/async", headers=proxied, data={"LANG": "ADQL", "QUERY": query}, timeout=120
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"{PUBLIC}/tap/async/")
    pending = f"{live.url}/async/{job_id(r.headers['location'])}"
    listed = httpx.get(f"{live.url}/async", headers=proxied, timeout=120).text
    assert f'href="{PUBLIC}/tap/async/{job_id(pending)}"' in listed
    assert httpx.delete(pending, timeout=120).status_code == 303

    # a job created without the proxy still links to DataLink at --public-url
    job_url = submit(live.url, query, fmt="votable")
    assert phase(finished(job_url)) == "COMPLETED"
    votable = httpx.get(f"{job_url}/results/result", timeout=120).text
    assert f'value="{PUBLIC}/datalink/links"' in votable
    assert "127.0.0.1" not in votable


def test_several_workers_need_a_shared_job_store(tap_db, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(tap_db),
         "--workers", "2", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("romerea-vo: error: --workers 2 needs a shared job store")
    assert "unknown to the others" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(tap_db),
         "--workers", "2", "--jobs-db", "postgresql://nobody@127.0.0.1:1/none", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "--jobs-db needs --work-dir" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(tap_db),
         "--workers", "2", "--jobs-db", "postgresql://nobody:secret@127.0.0.1:1/none",
         "--work-dir", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "cannot connect to the job database" in r.stderr
    assert "secret" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql (postgresql-client) not installed")
def test_setup_sql_gives_a_service_role_that_reads_only(pg_cluster, tmp_path):
    from romerea_vo.service.uws.pg_store import PostgresJobStore

    setup = Path(__file__).resolve().parents[1] / "services" / "postgres" / "setup.sql"
    db, owner, service = "romerea_setup", "rv_test_owner", "rv_test_service"
    for _ in range(2):  # idempotent: an operator may run it again
        done = subprocess.run(
            ["psql", pg_cluster.conninfo(), "-q", "-v", "ON_ERROR_STOP=1",
             "-v", f"dbname={db}", "-v", f"owner_role={owner}", "-v", f"service_role={service}",
             "-f", str(setup)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    import psycopg

    as_owner = f"host=127.0.0.1 port={pg_cluster.port} user={owner} dbname={db}"
    as_service = f"host=127.0.0.1 port={pg_cluster.port} user={service} dbname={db}"
    with psycopg.connect(as_owner, autocommit=True) as con:  # what ingest does
        con.execute("CREATE SCHEMA rome")
        con.execute("CREATE TABLE rome.stars (id integer)")
        con.execute("INSERT INTO rome.stars VALUES (1), (2)")
    with psycopg.connect(as_service, autocommit=True) as con:
        assert con.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert con.execute("SHOW statement_timeout").fetchone() == ("1h",)
        assert con.execute("SELECT count(*) FROM rome.stars").fetchone() == (2,)
        (flags,) = con.execute(
            "SELECT row(rolsuper, rolcreatedb, rolcreaterole, rolbypassrls)::text"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert flags == "(f,f,f,f)"
        for role in ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program"):
            assert con.execute("SELECT pg_has_role(%s, 'MEMBER')", (role,)).fetchone() == (False,)
        con.execute("SET default_transaction_read_only = off")  # privileges still refuse
        for statement in (
            "INSERT INTO rome.stars VALUES (3)",
            "CREATE TABLE rome.mine (x integer)",
            "CREATE TABLE public.mine (x integer)",
            "SELECT pg_read_file('/etc/hostname')",
            "COPY rome.stars TO '/tmp/romerea-stars.txt'",
            "COPY rome.stars TO PROGRAM 'cat'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(statement)

    def runner(job, token):
        path = job.directory / "result.txt"
        path.write_text(job.parameters["QUERY"])
        job.add_result("result", path, "text/plain")

    # the job store works as the service role, in the schema it owns
    with PostgresJobStore(as_service, tmp_path / "jobs", runner) as store:
        created = store.create({"QUERY": "hello"})
        store.run(created.job_id)
        finished_job = store.wait(created.job_id, 30)  # returns at each change of phase
        while finished_job.phase in ("QUEUED", "EXECUTING"):
            finished_job = store.wait(created.job_id, 30)
        assert finished_job.phase == "COMPLETED"
        assert finished_job.results[0].path.read_text() == "hello"
    with psycopg.connect(pg_cluster.conninfo(db), autocommit=True) as con:
        (schema_owner,) = con.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'romerea_uws'"
        ).fetchone()
    assert schema_owner == service


def test_service_connections_get_tcp_nodelay():
    """The socket `serve` listens on makes asyncio switch Nagle's algorithm off for each
    connection; with it on, every keep-alive response (headers and body written
    separately) waited ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from romerea_vo.service.workers import listening_socket

    async def check() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            peer = writer.get_extra_info("socket")
            seen.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listening_socket("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(check()) != 0


def test_a_busy_port_is_refused_clearly():
    from romerea_vo.errors import InvalidRequestError
    from romerea_vo.service.workers import listening_socket

    taken = listening_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(InvalidRequestError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)
    finally:
        taken.close()


def _server_socket_inodes(port: int) -> dict[int, int]:
    """Client port -> inode of the service's end of that connection (/proc/net/tcp)."""
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], int(parts[9])
        if int(local.split(":")[1], 16) == port and inode:
            inodes[int(remote.split(":")[1], 16)] = inode
    return inodes


def _worker_holding(inode: int, workers: list[int]) -> int | None:
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_keep_alive_clients_arriving_together_are_spread_over_the_workers(live):
    """16 connections opened at once (a benchmark, a proxy's upstream pool): with one
    shared listening socket the first worker to wake accepted them all and the other
    idled; with a socket per worker the kernel spreads them."""
    import socket

    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc to see which worker holds a connection")
    host, port = live.url.removeprefix("http://").split("/")[0].split(":")
    port = int(port)
    clients = [socket.create_connection((host, port), timeout=120) for _ in range(16)]
    try:
        for c in clients:  # every connection accepted and answered, kept open
            c.sendall(f"GET /tap/availability HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        for c in clients:
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        workers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == live.proc.pid
        ]
        inodes = _server_socket_inodes(port)
        holders = [_worker_holding(inodes[c.getsockname()[1]], workers) for c in clients]
    finally:
        for c in clients:
            c.close()
    assert None not in holders
    counts = {pid: holders.count(pid) for pid in set(holders)}
    assert len(counts) == 2, f"connections per worker: {counts}"


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
