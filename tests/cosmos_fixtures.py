"""A Cosmos DB-compatible server for over-the-wire tests (`@vercel/cosmosdb-server`, npm).

HTTPS with a self-signed certificate, in memory, one per test run; each test gets its own
container. It speaks the real REST API, so the adapter runs the same code path as on Azure.
Known gaps of @vercel/cosmosdb-server 1.0.1: no transactional batch, TTL stored but not enforced, ~50 writes/s, and a
point read of a missing item answers 500 instead of 404 (the adapter uses queries for lookups).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.conftest import IN_CI, ROOT, service_is_listening
from tests.netutil import free_port

if TYPE_CHECKING:
    from azure.cosmos import ContainerProxy

    from events.stores.cosmos import CosmosEventStore

# The documented, public key of the Azure Cosmos DB emulator; the test server accepts any key.
COSMOS_EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nqAwobhqlzVrQrsZS3EF2QIrsr/lhPLwrtSyoQ=="
SERVER_CLI = ROOT / "node_modules" / "@vercel" / "cosmosdb-server" / "lib" / "cli.js"
SERVER_CERT = SERVER_CLI.parent.parent / "cert.pem"
SERVER_KEY = SERVER_CLI.parent.parent / "key.pem"
TEST_DATABASE = "cloudscale-test"
AUTOSCALE_MAX_RU = 4000


def _missing(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the Cosmos DB tests must run)", pytrace=False)
    pytest.skip(f"{reason}: the Cosmos DB tests need it")


@dataclass
class CosmosServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def store(self, *, endpoint: str | None = None, container: str | None = None) -> CosmosEventStore:
        """A store on a fresh, provisioned container of its own (or on `container`)."""
        from events.stores.cosmos import CosmosEventStore

        name = container or f"events-{uuid.uuid4().hex[:12]}"
        if container is None:
            self.provision(name)
        return CosmosEventStore(
            endpoint=endpoint or self.endpoint,
            credential=COSMOS_EMULATOR_KEY,
            database=TEST_DATABASE,
            container=name,
            verify_tls=False,
        )

    def provision(self, container: str) -> list[str]:
        from events.stores.cosmos import CosmosEventStore

        store = CosmosEventStore(
            endpoint=self.endpoint,
            credential=COSMOS_EMULATOR_KEY,
            database=TEST_DATABASE,
            container=container,
            verify_tls=False,
        )
        return store.provision(autoscale_max_ru=AUTOSCALE_MAX_RU)

    def plain_container(self, container: str) -> ContainerProxy:
        """A plain azure-cosmos client, independent of the adapter, to check what is really stored."""
        from azure.cosmos import CosmosClient

        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        client = CosmosClient(self.endpoint, credential=COSMOS_EMULATOR_KEY, connection_verify=False)
        return client.get_database_client(TEST_DATABASE).get_container_client(container)


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CosmosServer]:
    node = shutil.which("node")
    if node is None:
        _missing("node (Node.js 20) is not installed")
    if not SERVER_CLI.exists():
        _missing(f"{SERVER_CLI.relative_to(ROOT)} is missing (`npm install` or `make node-deps`)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("cosmos") / "cosmosdb-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(node), str(SERVER_CLI), "-p", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = CosmosServer(endpoint=f"https://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + 20
    while not service_is_listening("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"cosmosdb-server did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    yield server
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- a fault-injecting proxy ------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the proxy saw, and what the client got back."""

    at: float  # time.monotonic()
    method: str
    path: str
    kind: str  # "create", "upsert", "query", "read", "other"
    item_id: str | None  # the document's id, for creates and upserts
    partition_key: str | None  # the x-ms-documentdb-partitionkey header, decoded
    cross_partition: bool
    status: int = 0
    injected: bool = False


@dataclass(frozen=True)
class Fault:
    """Answer with `status` instead of the server: `before` forwarding (the server never sees the
    request) or `after` it (the write happened, the client does not learn it)."""

    status: int
    when: str = "before"
    retry_after_ms: int | None = None


Decide = Callable[[Seen], Fault | None]
_DOCS_PATH = re.compile(r"^/dbs/[^/]+/colls/[^/]+/docs/?$")


def _kind(method: str, path: str, headers: Mapping[str, str]) -> str:
    if method == "POST" and _DOCS_PATH.match(path):
        if headers.get("x-ms-documentdb-isquery", "").lower() == "true":
            return "query"
        return "upsert" if headers.get("x-ms-documentdb-is-upsert", "").lower() == "true" else "create"
    return "read" if method == "GET" else "other"


class FaultProxy:
    """HTTPS in front of the test server, answering some requests with a fault (429 with
    x-ms-retry-after-ms, 503, 408, ...) as `decide` says, and recording every request."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.decide: Decide = lambda seen: None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple and enough here

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._relay(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(SERVER_CERT, SERVER_KEY)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.endpoint = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, kind: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.kind == kind]

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in handler.headers.items()}
        kind = _kind(handler.command, handler.path, headers)
        item_id = None
        if kind in {"create", "upsert"}:
            item_id = json.loads(body).get("id")
        raw_pk = headers.get("x-ms-documentdb-partitionkey")
        seen = Seen(
            at=time.monotonic(),
            method=handler.command,
            path=handler.path,
            kind=kind,
            item_id=item_id,
            partition_key=json.loads(raw_pk)[0] if raw_pk and raw_pk != "[{}]" else None,
            cross_partition=headers.get("x-ms-documentdb-query-enablecrosspartition", "").lower() == "true",
        )
        with self._lock:
            self.seen.append(seen)
            fault = self.decide(seen)
        if fault is None or fault.when == "after":
            status, reply_headers, reply = self._forward(handler.command, handler.path, headers, body)
        if fault is not None:
            seen.injected = True
            status, reply_headers = fault.status, {"content-type": "application/json"}
            if fault.retry_after_ms is not None:
                reply_headers["x-ms-retry-after-ms"] = str(fault.retry_after_ms)
            reply = json.dumps(
                {"code": f"Injected{fault.status}", "message": "injected by the test proxy"}
            ).encode()
        seen.status = status
        handler.send_response(status)
        for name, value in reply_headers.items():
            if name.lower() not in {"connection", "transfer-encoding", "content-length"}:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(reply)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(reply)

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        upstream = http.client.HTTPSConnection(
            "127.0.0.1",
            self.upstream_port,
            context=ssl._create_unverified_context(),  # noqa: S323 (the self-signed test server)
            timeout=30,
        )
        try:
            forwarded = {k: v for k, v in headers.items() if k not in {"connection", "content-length"}}
            upstream.request(method, path, body=body or None, headers=forwarded)
            response = upstream.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            upstream.close()


@pytest.fixture
def fault_proxy(cosmos_server: CosmosServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(int(cosmos_server.endpoint.rsplit(":", 1)[1])).start()
    yield proxy
    proxy.stop()
