"""A TCP relay in front of a database server that can stall or refuse, without touching the server:
tests/test_decision_log.py and bench/faults.py put it between the decision log and PostgreSQL."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingRelay:
    """Relays TCP connections to `target`. `stall_all()`: every byte in either direction is held until
    `release()`; `stall_from(marker)`: a connection's client bytes are held from the first chunk that
    holds `marker` on. Held bytes are delivered, in order, at `release()`, even from a client that has
    closed its end meanwhile (as a stopped server's kernel would have queued them)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._released = threading.Event()
        self._released.set()
        self._marker: bytes | None = None
        self._all = False
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall_all(self) -> None:
        self._all, self._marker = True, None
        self._released.clear()

    def stall_from(self, marker: bytes) -> None:
        self._all, self._marker = False, marker
        self._released.clear()

    def release(self) -> None:
        self._all, self._marker = False, None
        self._released.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        held = False
        try:
            while True:
                data = src.recv(65536)
                if from_client and self._marker is not None and self._marker in data:
                    held = True
                if self._all or held:
                    self._released.wait()
                    held = False
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def refuse(self) -> None:
        """A database that is gone: open connections are reset and new ones refused until `restore()`."""
        self._closed = True
        self.listener.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                # shutdown, not close alone: a pump thread blocked in recv() keeps a closed socket open
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self._conns.clear()

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.release()
        self.listener.close()
