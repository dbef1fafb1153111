"""Running a ``Service`` under uvicorn: bounded at the socket too, quiet logs.

``limit_concurrency`` (connections + tasks uvicorn accepts before answering 503) sits
above the service's own in-flight bound, so an overload is refused at the door instead
of queued. httptools and uvloop are used when installed (the ``serve`` extra has them).
"""

from __future__ import annotations

import importlib.util
import signal
from collections.abc import Callable
from typing import Any

from .app import Service
from .config import ServeConfig

__all__ = ["run", "uvicorn_config"]


def uvicorn_config(service: Service, *, host: str | None = None, port: int | None = None) -> Any:
    import uvicorn

    cfg = service.cfg
    return uvicorn.Config(
        service.app,
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        access_log=False,
        log_level=cfg.log_level,
        limit_concurrency=cfg.max_in_flight * 2 + 64,
        backlog=min(4096, cfg.max_in_flight * 4 + 128),
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        server_header=False,
        h11_max_incomplete_event_size=64 * 1024,
    )


def run(cfg: ServeConfig, *, on_listen: Callable[[str], None] | None = None, **service_kwargs: Any) -> int:
    """Check ``cfg``, build the service and serve until SIGINT/SIGTERM.

    ``on_listen(url)`` is called once the socket is bound (the CLI prints the URL).
    Returns the exit code: 0 after SIGTERM, 130 after SIGINT, 3 if the port could not be bound."""
    import uvicorn

    class _Server(uvicorn.Server):
        signals: list[int] = []

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self.signals.append(sig)
            self._captured_signals.clear()  # shut down gracefully, then exit with a code (no re-raise)

    cfg.check()
    service = Service(cfg, **service_kwargs)
    server = _Server(uvicorn_config(service))
    if on_listen is not None:
        _announce(server, on_listen, cfg.host)
    try:
        server.run()
    finally:
        service.close()
    if not server.started:
        return 3  # could not bind (uvicorn logged why)
    return 130 if signal.SIGINT in server.signals else 0


def _announce(server: Any, on_listen: Callable[[str], None], host: str) -> None:
    startup = server.startup

    async def wrapped(sockets: Any = None) -> None:
        await startup(sockets=sockets)
        for s in getattr(server, "servers", []) or []:
            for sock in s.sockets:
                port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                on_listen(f"http://{shown}:{port}")
                return

    server.startup = wrapped
