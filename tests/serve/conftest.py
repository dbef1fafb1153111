"""A real service on 127.0.0.1 (uvicorn, random port) in a thread of the test process,
so tests can also look at the objects behind it; ``dspex serve`` subprocess tests are in
test_cli.py. Every server is stopped (and its pools closed) at the end of its test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex.serve import Service, load_serve_config, uvicorn_config


class Running:
    """A started service: ``.url``, ``.service``, ``.client`` (httpx, bounded timeouts)."""

    def __init__(self, service: Service):
        import uvicorn

        self.service = service
        self.server = uvicorn.Server(uvicorn_config(service, port=0))
        self.thread = threading.Thread(target=self.server.run, name="dspex-serve-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get("/readyz").status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"service not ready: {self.service.problem}")

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """``serve(programs=[...], pipelines=[...], lm=..., **serve_keys) -> Running`` (ready)."""
    started: list[Running] = []

    def start(*, lm: Any = None, ready: bool = True, **raw: Any) -> Running:
        cfg = load_serve_config(None, **raw)
        cfg.check()
        svc = Service(cfg, lm=lm)
        run = Running(svc)
        started.append(run)
        if ready:
            run.wait_ready()
        return run

    yield start
    for run in started:
        run.stop()


@pytest.fixture
def lm(fake_lm: Any) -> Any:
    import dspex

    return dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False, num_retries=0)
