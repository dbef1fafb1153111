"""An OpenAI-compatible LM on loopback that answers after ``delay`` seconds and records
connections the client closed before the answer: how a test sees an LM call cancelled."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any


class SlowLM:
    def __init__(self, delay: float = 30.0):
        self.delay = delay
        self.received = 0
        self.closed_early = 0
        self.answered = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: Any = None
        self.port = 0

    def __enter__(self) -> SlowLM:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            self.received += 1
            try:  # EOF before the delay is up: the client gave up on this call
                await asyncio.wait_for(reader.read(1), self.delay)
                self.closed_early += 1
                return
            except TimeoutError:
                pass
            text = "[[ ## answer ## ]]\nlate\n\n[[ ## completed ## ]]"
            body = json.dumps({"id": "x", "object": "chat.completion", "model": "slow", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            self.answered += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_early += 1
        finally:
            writer.close()
