"""A sans-I/O HTTP/1.1 response reader shared by the sync and async stdlib clients.

Feed it the bytes as they arrive; it returns the :class:`Response` once one is
complete. Why its own: the sync and async paths must agree byte for byte on
what a reply is (same head limit, same 1xx handling, same body framing), and
both must read large bodies in linear time (one ``bytearray``, no re-slicing).

* 1xx interim responses (``100 Continue``, ``103 Early Hints``) are skipped;
  ``101 Switching Protocols`` is an error (we never ask for an upgrade).
* The head (status line + headers) is bounded by :data:`MAX_HEAD` bytes.
* Bodies: ``Transfer-Encoding: chunked``, ``Content-Length``, or until close.
* Bytes beyond the end of the response are reported (``extra``): the
  connection is then in doubt and must be closed, never reused.
"""

from __future__ import annotations

import gzip
import zlib
from typing import NamedTuple

__all__ = ["MAX_HEAD", "BadResponse", "Response", "ResponseReader", "request_bytes"]

MAX_HEAD = 256 * 1024  # a real LM server's head is < 8 KiB; this only stops a runaway
_MAX_LINE = 1024  # a chunk-size line


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes


class BadResponse(Exception):
    """The bytes from the server are not a well-formed HTTP/1.1 response."""


def request_bytes(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    """The whole request in one buffer: headers and body in separate sends cost a server wake-up each."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise BadResponse(f"bad status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise BadResponse(f"bad header line {line[:100]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
    return int(parts[1]), headers, keep


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise BadResponse(f"conflicting Content-Length values {value[:100]!r}")
    (text,) = values
    if not text.isdigit() or len(text) > 15:
        raise BadResponse(f"bad Content-Length {text[:100]!r}")
    return int(text)


def _decode_body(headers: dict[str, str], body: bytes) -> bytes:
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    try:
        if coding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if coding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadResponse(f"cannot decode the {coding} body: {exc}") from None
    raise BadResponse(f"unsupported Content-Encoding {coding!r}")


class ResponseReader:
    """Reads one response. ``feed(data)`` -> Response or None (needs more); ``eof()`` at close."""

    __slots__ = ("_body", "_buf", "_chunk_left", "_length", "_mode", "_pos", "_scan", "extra", "headers", "keep", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # everything before _pos is consumed
        self._scan = 0  # where the next search for the end of the head starts (keeps it linear)
        self._mode = "head"  # head | length | chunk-size | chunk-data | trailer | close
        self._body = bytearray()
        self._length = 0
        self._chunk_left = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep = True
        self.extra = False  # bytes followed the response: the connection is in doubt

    def feed(self, data: bytes | bytearray | memoryview) -> Response | None:
        self._buf += data
        return self._advance()

    def eof(self) -> Response:
        """The server closed the connection: the response, if that ends it, else ConnectionError."""
        if self._mode == "close":
            self._body += self._buf[self._pos :]
            self.keep = False
            return self._done(len(self._buf))
        if self._mode == "head" and self._pos == len(self._buf):
            raise ConnectionResetError("the server closed the connection without answering")
        # a broken connection, not a malformed reply: trying again can succeed
        raise ConnectionAbortedError(f"the server closed the connection mid-response (while reading {self._mode})")

    @property
    def started(self) -> bool:
        """Some byte of a response has arrived (a retry could repeat a processed request)."""
        return bool(self._buf) or self.status != 0

    def _done(self, end: int) -> Response:
        self.extra = end < len(self._buf)
        body = _decode_body(self.headers, bytes(self._body))
        return Response(self.status, self.headers, body)

    def _advance(self) -> Response | None:
        buf = self._buf
        while True:
            if self._mode == "head":
                end = buf.find(b"\r\n\r\n", self._scan)
                if end < 0:
                    if len(buf) - self._pos > MAX_HEAD:
                        raise BadResponse(f"response head over {MAX_HEAD // 1024} KiB")
                    self._scan = max(self._pos, len(buf) - 3)
                    return None
                if end + 4 - self._pos > MAX_HEAD:
                    raise BadResponse(f"response head over {MAX_HEAD // 1024} KiB")
                status, headers, keep = _parse_head(bytes(buf[self._pos : end]))
                self._pos = self._scan = end + 4
                if 100 <= status < 200:
                    if status == 101:
                        raise BadResponse("the server switched protocols (101); an LM endpoint must answer HTTP/1.1")
                    continue  # interim response: the real one follows on the same connection
                self.status, self.headers, self.keep = status, headers, keep
                # the consumed head is dropped once, so the body buffer starts at 0
                del buf[: self._pos]
                self._pos = 0
                if status in (204, 304):
                    return self._done(0)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self._mode = "chunk-size"
                elif "content-length" in headers:
                    self._length = _content_length(headers["content-length"])
                    self._mode = "length"
                else:
                    self._mode = "close"
                    return None
            elif self._mode == "length":
                if len(buf) < self._length:
                    return None
                self._body = buf if len(buf) == self._length else bytearray(memoryview(buf)[: self._length])
                return self._done(self._length)
            elif self._mode == "close":
                return None
            elif self._mode == "chunk-size":
                end = buf.find(b"\r\n", self._pos)
                if end < 0:
                    if len(buf) - self._pos > _MAX_LINE:
                        raise BadResponse("chunk-size line too long")
                    return None
                text = bytes(buf[self._pos : end]).split(b";", 1)[0].strip()
                try:
                    size = int(text, 16) if len(text) <= 12 else -1
                except ValueError:
                    size = -1
                if size < 0:
                    raise BadResponse(f"bad chunk size {text[:40]!r}")
                self._pos = end + 2
                if size == 0:
                    self._mode, self._scan = "trailer", self._pos
                else:
                    self._chunk_left, self._mode = size + 2, "chunk-data"
            elif self._mode == "chunk-data":
                avail = len(buf) - self._pos
                if avail < self._chunk_left:
                    if self._chunk_left > 2:  # copy what is here, keep the buffer small
                        take = min(avail, self._chunk_left - 2)
                        self._body += memoryview(buf)[self._pos : self._pos + take]
                        self._chunk_left -= take
                        del buf[: self._pos + take]
                        self._pos = 0
                    return None
                take = self._chunk_left - 2
                self._body += memoryview(buf)[self._pos : self._pos + take]
                if buf[self._pos + take : self._pos + take + 2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                self._pos += self._chunk_left
                self._mode = "chunk-size"
            else:  # trailer: header lines until an empty one
                end = buf.find(b"\r\n", self._pos)
                if max(end, len(buf)) - self._scan > MAX_HEAD:
                    raise BadResponse(f"trailers over {MAX_HEAD // 1024} KiB")
                if end < 0:
                    return None
                line_empty = end == self._pos
                self._pos = end + 2
                if line_empty:
                    return self._done(self._pos)
