"""A local HTTP server speaking the ColBERTv2 search protocol over a dspex index.

``dspy.ColBERTv2(url=...)`` is only an HTTP client: it sends ``GET ?query=...&k=...``
(or a JSON ``POST {"query", "k"}`` with ``post_requests=True``) and reads
``{"topk": [{"text", "pid", "score", ...}]}``, adding ``long_text`` itself (it also
checks ``error``/``message``). This server answers that protocol on loopback from
any index with ``.search(query, k)`` -- by default a BM25 over a local corpus -- so
DSPy programs written against ColBERTv2 run offline, and native code can query the
very same index in process.

    with ColBERTv2Server("solar_system") as server:     # or ColBERTv2Server(BM25(...))
        dspy.ColBERTv2(url=server.url)("moons of mars", k=3)

    python -m dspex.native.colbert_server --corpus solar_system --port 8893
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from .retrieve import BM25

__all__ = ["MAX_K", "ColBERTv2Server", "SearchIndex"]

MAX_K = 100  # the hosted ColBERTv2 server's limit, which dspy's client also asserts


class SearchIndex(Protocol):
    def search(self, query: str, k: int = ...) -> list[dict[str, Any]]: ...


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: requests.Session reuses the connection

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, query: Any, k: Any) -> None:
        if not isinstance(query, str) or not query.strip():
            self._reply(400, {"error": True, "message": "missing 'query' parameter"})
            return
        try:
            k_int = int(k) if k is not None else 10
        except (TypeError, ValueError):
            self._reply(400, {"error": True, "message": f"'k' must be an integer, not {k!r}"})
            return
        k_int = max(1, min(k_int, MAX_K))
        hits = self.server.index.search(query, k_int)
        topk = [
            {
                "text": h["text"],
                "pid": h["pid"],
                "rank": rank,
                "score": h["score"],
                "prob": None,
                "long_text": h["text"],
            }
            for rank, h in enumerate(hits, 1)
        ]
        self.server.count_request()
        self._reply(200, {"query": query, "topk": topk, "latency": None})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path in ("/health", "/healthz"):
            self._reply(200, {"ok": True, "passages": len(getattr(self.server.index, "texts", []))})
            return
        params = parse_qs(url.query)
        self._answer(params.get("query", [None])[0], params.get("k", [None])[0])

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._reply(400, {"error": True, "message": "body is not JSON"})
            return
        if not isinstance(body, dict):
            self._reply(400, {"error": True, "message": "body must be a JSON object"})
            return
        self._answer(body.get("query"), body.get("k"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], index: SearchIndex):
        self.index = index
        self.requests_served = 0
        self._lock = threading.Lock()
        super().__init__(addr, _Handler)

    def count_request(self) -> None:
        with self._lock:
            self.requests_served += 1


class ColBERTv2Server:
    """Serve ``index`` (an object with ``.search(query, k)``, a corpus list, or a corpus
    name/path for :class:`BM25`) on ``host:port`` (port 0 picks a free one).
    """

    def __init__(
        self,
        index: SearchIndex | list[Any] | str | Path = "solar_system",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if isinstance(index, (str, Path)):
            index = BM25.from_path(index)
        elif isinstance(index, list):
            index = BM25(index)
        self.index: SearchIndex = index
        self._server = _Server((host, port), self.index)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        return f"http://{host}:{port}"

    @property
    def requests_served(self) -> int:
        return self._server.requests_served

    def start(self) -> ColBERTv2Server:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="colbertv2-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ColBERTv2Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block serving (the CLI)."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local corpus over the ColBERTv2 HTTP protocol.")
    parser.add_argument("--corpus", default="solar_system", help="shipped corpus name or a .jsonl/.json/.txt path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8893)
    args = parser.parse_args(argv)
    server = ColBERTv2Server(args.corpus, host=args.host, port=args.port)
    print(f"ColBERTv2 protocol server on {server.url} ({len(getattr(server.index, 'texts', []))} passages)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
