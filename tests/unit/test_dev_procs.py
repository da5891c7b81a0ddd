"""The dev stack's port checks and process stopping, on real sockets and processes."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from boxrun.dev.procs import free_port, port_is_free, spawn, stop_together
from boxrun.dev.stack import DEFAULT_PORTS, INTERNAL_PORTS, resolve_ports


def leave_time_wait() -> int:
    """A port whose only socket is in TIME_WAIT, as after a server that closed its connections
    (with SO_REUSEADDR, as uvicorn, PostgreSQL and the Go servers set it)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its socket goes to TIME_WAIT
    assert client.recv(1) == b""  # the server's FIN has arrived
    client.close()
    server.close()
    return port


def test_a_port_in_time_wait_is_free():
    port = leave_time_wait()
    plain = socket.socket()  # without SO_REUSEADDR, as the old check bound: busy
    with pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    plain.close()
    assert port_is_free(port)


def test_a_listening_port_is_busy():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert not port_is_free(server.getsockname()[1])


def test_resolve_ports_gives_every_part_a_distinct_port():
    ports = resolve_ports(None, auto=True)
    assert set(ports) == set(DEFAULT_PORTS) | set(INTERNAL_PORTS)
    assert len(set(ports.values())) == len(ports)
    taken = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", taken))
        server.listen()
        with pytest.raises(RuntimeError, match=rf"port {taken} \(s3\) is in use"):
            resolve_ports({"s3": taken}, auto=True)


def test_stop_together_stops_in_parallel_and_kills_at_the_deadline(tmp_path):
    slow = (
        "import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); print('deaf', flush=True); time.sleep(60)"
    )
    children = [spawn(f"c{i}", [sys.executable, "-c", slow], tmp_path) for i in range(3)]
    deadline = time.monotonic() + 30
    while not all("deaf" in c.log_tail() for c in children):  # every child ignores SIGTERM now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    stop_together(children, timeout=1.0)
    assert all(c.proc.returncode == -9 for c in children), "SIGTERM ignored: killed at the deadline"
    assert time.monotonic() - started < 5, "one shared deadline, not one per child"
