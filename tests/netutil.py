"""Small network helpers shared by the test settings, fixtures and tests."""

from __future__ import annotations

import contextlib
import socket
import threading


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """A TCP proxy on loopback to `upstream_port`, for tests that break a connection on purpose.

    Each accepted client gets its own connection to the upstream server; a subclass starts the
    threads that pump the two directions (`connected`) and may refuse new clients (`refusing`).
    `close_all` closes every connection made so far, as a server that died would.
    """

    def __init__(self, *, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def refusing(self) -> bool:
        """True while a new client must be closed at once (connection refused, as it can tell)."""
        return False

    def connected(self, client: socket.socket, server: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing():
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, server]
            self.connected(client, server)

    def close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.close_all()
