"""DALI parameter reading and TAP UPLOAD parsing, through a real uvicorn server."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from romerea_vo.errors import InvalidRequestError
from romerea_vo.service.params import (
    DaliParams,
    format_bytes,
    is_adql_identifier,
    parse_upload_param,
    read_dali_params,
)

LIMIT = 1024 * 1024  # 1 MiB per upload in these tests


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def raw_request(base: str, head: str, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send raw HTTP/1.1 bytes and return what the server answers (until it closes)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data or len(data) < 200:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data


def stream_until_answer(
    base: str, head: str, first: bytes, *, max_bytes: int, chunk: int = 2**18
) -> tuple[int, str, int]:
    """Send a chunked body until the server answers; return (status, body, bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        sent = len(first)
        block = b"%x\r\n%s\r\n" % (chunk, b"z" * chunk)
        while sent < max_bytes and not select.select([s], [], [], 0.05)[0]:
            try:
                s.sendall(block)
            except OSError:
                break
            sent += chunk
        return (*read_response(s), sent)


def read_response(s: socket.socket) -> tuple[int, str]:
    """Read one HTTP response with a Content-Length; return (status, body text)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = s.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = s.recv(65536)
        if not piece:
            break
        body += piece
    return int(head.split()[1]), body.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server whose /echo reads DALI params into a fresh directory and reports them."""
    root = tmp_path_factory.mktemp("uploads")
    counter = iter(range(10**6))

    async def endpoint(request: Request) -> JSONResponse:
        directory = root / f"r{next(counter)}"
        try:
            params = await read_dali_params(
                request, directory, max_upload_bytes=LIMIT, max_field_bytes=4096
            )
        except InvalidRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        files = {
            name: {"size": path.stat().st_size, "head": path.read_bytes()[:40].decode("latin-1")}
            for name, path in params.files.items()
        }
        return JSONResponse({"values": params.values, "files": files, "dir": str(directory)})

    app = Starlette(routes=[Route("/echo", endpoint, methods=["GET", "POST"])])
    with running_server(app) as url:
        yield url, root


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


# --- DaliParams and helpers ----------------------------------------------------------


def test_names_case_insensitive_values_case_sensitive():
    params = DaliParams()
    params.add("query", "SELECT x FROM T")
    params.add("Upload", "a,param:A")
    params.add("UPLOAD", "b,param:b")
    assert params.get("QUERY") == "SELECT x FROM T"
    assert params.get("Query") == "SELECT x FROM T"
    assert params.getall("upload") == ["a,param:A", "b,param:b"]
    assert params.get("upload") == "a,param:A"  # first value wins
    assert params.get("missing") is None and params.get("missing", "d") == "d"
    assert params.getall("missing") == []


def test_format_bytes():
    assert format_bytes(100 * 2**20) == "100 MiB"
    assert format_bytes(100_000_000) == "100 MB"
    assert format_bytes(2 * 10**9) == "2 GB"
    assert format_bytes(4096) == "4 KiB"
    assert format_bytes(1500) == "1.5 kB"
    assert format_bytes(12) == "12 bytes"


# --- UPLOAD parameter ------------------------------------------------------------------


def test_upload_param_pairs_across_values():
    pairs = parse_upload_param(
        ["mine,param:t1; other , param:part2", "third,param:t3"], {"t1", "part2", "t3"}
    )
    assert pairs == [("mine", "param:t1"), ("other", "param:part2"), ("third", "param:t3")]
    assert parse_upload_param([]) == []
    assert parse_upload_param(["", " ; "]) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("t1", "not of the form table_name,URI"),
        ("t1,", "not of the form table_name,URI"),
        (",param:t1", "not of the form table_name,URI"),
        ("1abc,param:t1", "not a legal ADQL identifier"),
        ("my-table,param:t1", "not a legal ADQL identifier"),
        ('"quoted",param:t1', "not a legal ADQL identifier"),
        ("select,param:t1", "not a legal ADQL identifier"),
        ("t1,param:t1;T1,param:t1", "given twice"),
        ("t1,param:nope", "no file part named 'nope'"),
        ("t1,param:", "names no part"),
        ("t1,http://example.org/t.xml", "does not fetch remote tables"),
        ("t1,https://example.org/t.xml", "does not fetch remote tables"),
        ("t1,file:///etc/passwd", "unsupported URI"),
        ("t1,ftp://example.org/t.xml", "unsupported URI"),
    ],
)
def test_upload_param_refused(value, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_upload_param([value], {"t1"})


def test_upload_param_remote_only_when_allowed():
    uri = "https://example.org/t.xml"
    assert parse_upload_param([f"t1,{uri}"], allow_remote=True) == [("t1", uri)]
    with pytest.raises(InvalidRequestError, match="unsupported URI"):
        parse_upload_param(["t1,file:///etc/passwd"], allow_remote=True)


def test_upload_param_parts_unchecked_when_none():
    assert parse_upload_param(["t1,param:anything"]) == [("t1", "param:anything")]


def test_adql_identifier():
    assert is_adql_identifier("gaia_1") and is_adql_identifier("T")
    assert not is_adql_identifier("_x") and not is_adql_identifier("Join")
    assert not is_adql_identifier("a b") and not is_adql_identifier("")


# --- reading requests ------------------------------------------------------------------


def test_get_and_urlencoded_post(echo):
    url, _ = echo
    got = httpx.get(
        f"{url}/echo", params=[("lang", "ADQL"), ("Query", "SELECT 'a&b'")], timeout=120
    ).json()
    assert got["values"] == {"LANG": ["ADQL"], "QUERY": ["SELECT 'a&b'"]}
    got = httpx.post(
        f"{url}/echo?MAXREC=5",
        data={"query": "SELECT * FROM t WHERE x < 1", "upload": ["a,param:a", "b,param:b"]},
        timeout=120,
    ).json()
    assert got["values"] == {
        "MAXREC": ["5"],
        "QUERY": ["SELECT * FROM t WHERE x < 1"],
        "UPLOAD": ["a,param:a", "b,param:b"],
    }
    assert got["files"] == {}


def test_multipart_fields_and_files(echo):
    url, _ = echo
    table = b"<?xml version='1.0'?><VOTABLE>" + b"x" * 200_000 + b"</VOTABLE>"
    got = httpx.post(
        f"{url}/echo",
        data={"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:Tab1"},
        files={
            "Tab1": ("t1.xml", table, "application/x-votable+xml"),
            "other": ("../../evil name", b"a,b\n1,2\n", "text/csv"),
        },
        timeout=120,
    ).json()
    assert got["values"] == {"QUERY": ["SELECT * FROM TAP_UPLOAD.t1"], "UPLOAD": ["t1,param:Tab1"]}
    assert got["files"]["Tab1"] == {"size": len(table), "head": table[:40].decode()}
    assert got["files"]["other"]["size"] == 8
    saved = files_under(Path(got["dir"]))
    assert len(saved) == 2 and all(p.parent == Path(got["dir"]) for p in saved)


def test_field_too_long_refused(echo):
    url, _ = echo
    response = httpx.post(f"{url}/echo", files={"QUERY": (None, "x" * 5000)}, timeout=120)
    assert response.status_code == 400
    assert "parameter 'QUERY' exceeds the 4 KiB limit" in response.json()["error"]


def test_urlencoded_field_too_long_refused(echo):
    """Issue 16 item 9: the per-field limit held for multipart bodies only."""
    url, _ = echo
    response = httpx.post(f"{url}/echo", data={"QUERY": "é" * 2500}, timeout=120)
    assert response.status_code == 400
    assert "parameter 'QUERY' exceeds the 4 KiB limit" in response.json()["error"]


def test_a_thousand_ids_and_other_parameters_fit(echo):
    """Issue 16 item 9: 1,000 IDs (what /lightcurve and DataLink take) plus a few more."""
    url, _ = echo
    # short values: the echo server allows 32 KiB of urlencoded body
    data = {"ID": [str(i) for i in range(1, 1001)], "RESPONSEFORMAT": "csv"}
    got = httpx.post(f"{url}/echo", data=data, timeout=120)
    assert got.status_code == 200, got.text
    assert len(got.json()["values"]["ID"]) == 1000


def test_declared_two_gigabytes_refused_before_reading(echo):
    url, root = echo
    before = files_under(root)
    started = time.monotonic()
    answer = raw_request(
        url,
        "POST /echo HTTP/1.1\nHost: x\n"
        "Content-Type: multipart/form-data; boundary=XyZ\n"
        f"Content-Length: {2 * 10**9}\n",
        b'--XyZ\r\nContent-Disposition: form-data; name="t1"; filename="t.xml"\r\n\r\n'
        + b"a" * 1000,
    )
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"the request body (2 GB) exceeds the 2 MiB limit" in body
    assert files_under(root) == before


def test_streamed_upload_over_limit_refused_as_soon_as_passed(echo):
    url, root = echo
    head = (
        "POST /echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
        "Content-Type: multipart/form-data; boundary=XyZ\n"
    )
    first = (
        b'--XyZ\r\nContent-Disposition: form-data; name="QUERY"\r\n\r\nSELECT 1\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="big"; filename="b.xml"\r\n'
        b"Content-Type: application/x-votable+xml\r\n\r\n"
    )
    status, body, sent = stream_until_answer(url, head, first, max_bytes=100 * 2**20)
    assert status == 400
    assert "upload 'big' exceeds the 1 MiB limit on uploaded tables" in json.loads(body)["error"]
    assert sent < 8 * 2**20  # answered soon after the limit, not after 100 MiB
    assert not any("big" in p.name for p in files_under(root))  # partial file removed


def test_truncated_multipart_refused_and_removed(echo):
    url, root = echo
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="t1"; filename="t.xml"\r\n\r\n'
        + b"<VOTABLE>partial"
    )
    response = httpx.post(
        f"{url}/echo",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        timeout=120,
    )
    assert response.status_code == 400 and "truncated" in response.json()["error"]
    assert not any(p.name.endswith("_t1") for p in files_under(root))


def test_bad_content_types(echo):
    url, _ = echo
    response = httpx.post(
        f"{url}/echo", content=b"{}", headers={"Content-Type": "text/json"}, timeout=120
    )
    assert response.status_code == 400 and "unsupported Content-Type" in response.json()["error"]
    response = httpx.post(
        f"{url}/echo", content=b"x", headers={"Content-Type": "multipart/form-data"}, timeout=120
    )
    assert response.status_code == 400 and "boundary" in response.json()["error"]
    response = httpx.post(
        f"{url}/echo",
        content=b"QUERY=%FF",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]


def test_duplicate_file_parts_refused(echo):
    url, root = echo
    response = httpx.post(
        f"{url}/echo",
        files=[("t1", ("a.xml", b"aaa", "text/xml")), ("t1", ("b.xml", b"bbb", "text/xml"))],
        timeout=120,
    )
    assert response.status_code == 400 and "two uploads named 't1'" in response.json()["error"]
    assert not any(p.read_bytes() in (b"aaa", b"bbb") for p in files_under(root))
