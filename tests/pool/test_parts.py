"""Pool's parts used alone: a Caller, Dispatcher and WorkerIO over a real socketpair,
with this test playing the worker (real frames) and standing in for the supervisor."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dspex.errors import WorkerCrashed
from dspex.pool import protocol as P
from dspex.pool._call import Caller
from dspex.pool._dispatch import Dispatcher
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool._worker_io import READY, WorkerIO, _Worker


class Lifecycle:
    """The supervisor's side of the seams (WorkerEvents + Retirer): records what it is told."""

    def __init__(self, shared: PoolShared) -> None:
        self.shared = shared
        self.events: list[tuple[str, int]] = []
        self.eof = threading.Event()

    def on_ready(self, w: _Worker, m: list[Any]) -> None:
        self.events.append(("ready", w.token))

    def on_eof(self, w: _Worker) -> None:
        self.events.append(("eof", w.token))
        w.eof = True
        self.eof.set()

    def on_limit(self, w: _Worker, what: str) -> None:
        self.events.append(("limit", w.token))

    def protocol_error(self, w: _Worker, message: str) -> None:
        self.events.append(("protocol", w.token))

    def retire(self, w: _Worker, reason: str) -> None:
        self.events.append(("retire", w.token))

    def kill(self, w: _Worker, reason: str) -> None:
        self.events.append(("kill", w.token))


class Parts:
    def __init__(self) -> None:
        self.cfg = PoolConfig("parts", 1, forward_stderr=False)
        self.shared = PoolShared(100, None)
        self.codec = P.Codec(False, P.DEFAULT_MAX_FRAME)
        self.io = WorkerIO(self.cfg, self.shared, self.codec)
        self.dispatch = Dispatcher(self.cfg, self.shared, self.io)
        self.life = Lifecycle(self.shared)
        self.io.connect(self.dispatch, self.life)
        self.dispatch.connect(self.life)
        self.calls = Caller(self.cfg, self.shared, self.codec, self.dispatch, self.io, lambda: None)
        self.shared.handler_table = {"echo": ["sync", False]}
        self.shared.state = "running"
        host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_r, self.err_w = os.pipe()
        os.set_blocking(err_r, False)
        self.w = _Worker(1, host, err_r, P.FrameReader(self.codec))
        self.w.state = READY
        self.w.pid = os.getpid()
        self.w.ready_at = 1.0
        self.shared.workers.append(self.w)
        self.io.start()
        self.io.watch_worker(self.w)

    def serve(self, n: int) -> threading.Thread:
        """Answer ``n`` calls as a worker would: [RESULT, rid, args[0]]."""

        def run() -> None:
            reader = P.FrameReader(self.codec)
            done = 0
            while done < n:
                msgs = reader.recv(self.peer)
                assert msgs is not None
                for m in msgs:
                    assert m[0] == P.CALL
                    self.peer.sendall(self.codec.frame([P.RESULT, m[1], m[3][0]]))
                    done += 1

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.shared.closed = True
        self.shared.workers.clear()
        self.io.wake()
        self.io.join()
        self.io.unwatch(self.w.fd)
        self.w.sock.close()  # the socket object owns its fd: never let io.close() close it under it
        self.io.close()  # the wake eventfd and the stderr pipe
        os.close(self.err_w)
        self.peer.close()


@pytest.fixture
def parts() -> Iterator[Parts]:
    p = Parts()
    yield p
    p.close()


def test_caller_dispatcher_and_io_complete_calls_over_a_real_socket(parts: Parts) -> None:
    server = parts.serve(40)
    out: list[Any] = []

    def caller(i: int) -> None:
        for j in range(10):
            out.append(parts.calls.sync("echo", (i * 100 + j,), {}, None, 10.0, None, None, False))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    server.join(10.0)
    assert sorted(out) == sorted(i * 100 + j for i in range(4) for j in range(10))
    w = parts.w
    assert (w.n_serial, w.n_long, w.n_conc, len(w.inflight)) == (0, 0, 0, 0)  # every slot released
    assert parts.shared.counts["calls"] == 40
    assert parts.life.events == []


def test_worker_hangup_reaches_the_lifecycle_seam(parts: Parts) -> None:
    parts.dispatch.submit(call := parts.calls.new_call("echo", (1,), {}, None, None, None, None, False))
    assert call.worker is parts.w
    parts.io.arm(parts.w)
    parts.peer.close()  # the "worker" dies with a call in flight
    assert parts.life.eof.wait(10.0)
    assert ("eof", 1) in parts.life.events
    assert not isinstance(call.error, WorkerCrashed)  # failing it is the supervisor's job (finalize)
