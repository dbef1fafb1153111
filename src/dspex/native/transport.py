"""How an LM request reaches the server: a small transport interface and its implementations.

    transport.request(method, path, headers, body, timeout) -> Response     # sync
    await transport.arequest(method, path, headers, body, timeout)          # async

``timeout`` is ONE deadline for the whole request (connect, TLS, send, head,
body, redirects), sync and async alike. Failures are :class:`Timeout`,
:class:`ConnectError` (incl. :class:`TLSError`) or :class:`BadResponse`;
``lm.py`` maps them onto the dspex error family.

* :class:`FastTransport`: the stdlib keep-alive client (``_http.py``). Chosen
  only for ``http://`` to a loopback host with no proxy configured for it,
  where it is fully correct; a redirect it receives is handed to the library.
* :class:`LibraryTransport`: aiohttp (chosen on figures: bench/results/lm.md)
  for everything else: HTTPS (``ssl_ca_file=`` / ``verify=``, ``SSL_CERT_FILE``),
  ``HTTP(S)_PROXY``/``NO_PROXY``, redirects, gzip, remote hosts. Async callers
  get a session on their own loop; sync callers submit to one private
  event-loop thread per process. Either way the deadline is an
  ``asyncio.timeout`` around the whole request.
* :class:`MockTransport`: a function ``(Request) -> Response`` (tests).

``choose(endpoint, ssl_ca_file=, verify=)`` picks one.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import ipaddress
import os
import ssl
import threading
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, NamedTuple, Protocol

from . import _http
from ._h1 import BadResponse, Response
from ._http import ConnectError, Endpoint, Timeout

__all__ = [
    "BadResponse",
    "ConnectError",
    "FastTransport",
    "LibraryTransport",
    "MockTransport",
    "Request",
    "Response",
    "TLSError",
    "Timeout",
    "Transport",
    "choose",
    "is_loopback",
    "proxy_for",
]

_REDIRECTS = (301, 302, 303, 307, 308)


class TLSError(ConnectError):
    """The server's certificate could not be verified (not retryable: it will fail the same way)."""


class Request(NamedTuple):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float


class Transport(Protocol):
    """What the LM needs from HTTP: one request, one complete response, within ``timeout`` seconds."""

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response: ...

    async def arequest(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response: ...

    def close(self) -> None: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(endpoint: Endpoint) -> str | None:
    """The proxy URL the environment (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) routes ``endpoint`` through."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if not proxy:
        return None
    if urllib.request.proxy_bypass(f"{endpoint.host}:{endpoint.port}") or urllib.request.proxy_bypass(endpoint.host):
        return None
    return proxy


def choose(endpoint: Endpoint, *, ssl_ca_file: str | None = None, verify: bool | str = True) -> Transport:
    if endpoint.scheme == "http" and is_loopback(endpoint.host) and proxy_for(endpoint) is None:
        return FastTransport(endpoint, ssl_ca_file=ssl_ca_file, verify=verify)
    return LibraryTransport(endpoint, ssl_ca_file=ssl_ca_file, verify=verify)


class FastTransport:
    """The stdlib fast path; redirects (rare on loopback) go through the library."""

    def __init__(self, endpoint: Endpoint, *, ssl_ca_file: str | None = None, verify: bool | str = True):
        self.endpoint = endpoint
        self._sync = _http.SyncPool(endpoint)
        self._async = _http.AsyncPool(endpoint)
        self._library_args = {"ssl_ca_file": ssl_ca_file, "verify": verify}
        self._library: LibraryTransport | None = None

    def _fallback(self) -> LibraryTransport:
        if self._library is None:
            self._library = LibraryTransport(self.endpoint, **self._library_args)  # type: ignore[arg-type]
        return self._library

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        resp = self._sync.request(method, path, headers, body, timeout)
        if resp.status in _REDIRECTS and "location" in resp.headers:
            return self._fallback().request(method, path, headers, body, timeout)
        return resp

    async def arequest(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        resp = await self._async.request(method, path, headers, body, timeout)
        if resp.status in _REDIRECTS and "location" in resp.headers:
            return await self._fallback().arequest(method, path, headers, body, timeout)
        return resp

    def close(self) -> None:
        self._sync.close()
        self._async.close()
        if self._library is not None:
            self._library.close()


class _Sessions:
    """The aiohttp sessions of one event loop, closed when that loop shuts its async generators down."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[Any, ...], Any] = {}
        self.closer: AsyncGenerator[None, None] | None = None  # strong ref: the loop holds it weakly

    async def start(self) -> None:
        # closed on their own loop when asyncio.run() ends: no "Unclosed client session" at exit
        self.closer = await _http.at_loop_end(self.aclose)

    async def aclose(self) -> None:
        sessions, self.by_key = list(self.by_key.values()), {}
        for session in sessions:
            await session.close()


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sessions] = weakref.WeakKeyDictionary()


async def _sessions_here() -> _Sessions:
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = _Sessions()
        await found.start()
    return found


class _Loop:
    """A private event loop on a daemon thread for sync callers (one per process; new after fork).

    Sync requests run there under ``asyncio.timeout``: a true total deadline, which
    blocking clients (per-read socket timeouts) cannot give.
    """

    _lock = threading.Lock()
    _current: _Loop | None = None

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dspex-lm-http", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _Loop:
        cur = cls._current
        if cur is not None and cur.pid == os.getpid():
            return cur
        with cls._lock:
            if cls._current is None or cls._current.pid != os.getpid():
                cls._current = _Loop()
            return cls._current

    def submit(self, coro: Coroutine[Any, Any, Response]) -> concurrent.futures.Future[Response]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @classmethod
    def shutdown(cls) -> None:
        cur = cls._current
        if cur is None or cur.pid != os.getpid():
            return
        sessions = _by_loop.get(cur.loop)
        try:
            if sessions is not None:
                asyncio.run_coroutine_threadsafe(sessions.aclose(), cur.loop).result(2)
        except Exception:
            pass
        cur.loop.call_soon_threadsafe(cur.loop.stop)


atexit.register(_Loop.shutdown)


def _split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://u:p@host:3128`` -> (``http://host:3128``, (u, p)); a scheme-less proxy gets ``http://``."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), user


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _ca_file(ssl_ca_file: str | None, verify: bool | str) -> str | None:
    return ssl_ca_file or (verify if isinstance(verify, str) else None) or os.environ.get("SSL_CERT_FILE") or None


def _ssl_context(cafile: str | None, verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        return False
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load the CA bundle {cafile!r}: {exc}") from None


class LibraryTransport:
    """aiohttp: proxies from the environment, TLS options, redirects, gzip.

    Async callers use a session on their own loop (no thread hop); sync callers submit to
    the private loop. LMs with the same TLS settings share sessions (and connections).
    """

    def __init__(self, endpoint: Endpoint, *, ssl_ca_file: str | None = None, verify: bool | str = True):
        self.endpoint = endpoint
        self.verify = verify
        self.ca_file = _ca_file(ssl_ca_file, verify)  # read once, like the proxy settings
        self._key = (self.ca_file, verify is False)
        # the proxy is resolved once here (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), not by aiohttp's
        # trust_env, which re-reads the environment and ~/.netrc on every request (bench_lm (d):
        # 2.5 ms vs 0.4 ms per call with it on a loaded run)
        proxy = proxy_for(endpoint)
        self.proxy: str | None = None
        user: tuple[str, str] | None = None
        if proxy:
            self.proxy, user = _split_userinfo(proxy)
        auth = {"Proxy-Authorization": _basic_auth(*user)} if user else {}
        # plain http: the proxy reads the request itself; https: only the CONNECT (never the origin)
        self._request_extra = auth if endpoint.scheme == "http" else {}
        self._proxy_headers = auth if endpoint.scheme == "https" and auth else None

    async def _session(self) -> Any:
        sessions = await _sessions_here()
        session = sessions.by_key.get(self._key)
        if session is None or session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(ssl=_ssl_context(self.ca_file, self.verify), limit=256)
            session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
            sessions.by_key[self._key] = session
        return session

    async def _run(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        import aiohttp

        url = self.endpoint.origin + path
        try:
            async with asyncio.timeout(timeout):
                session = await self._session()
                async with session.request(
                    method,
                    url,
                    data=body,
                    headers={**headers, **self._request_extra} if self._request_extra else headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    max_redirects=10,
                    proxy=self.proxy,
                    proxy_headers=self._proxy_headers,
                ) as resp:
                    data = await resp.read()
                    return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise Timeout(f"no complete reply within {timeout:g}s") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TLSError(
                f"the TLS certificate of {self.endpoint.origin} could not be verified ({exc.certificate_error}); "
                "pass ssl_ca_file='<CA bundle>' (or set SSL_CERT_FILE) if it is signed by a private CA"
            ) from None
        except aiohttp.TooManyRedirects as exc:
            raise BadResponse(f"too many redirects from {url}: {exc}") from None
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
            raise BadResponse(f"{type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from None

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        fut = _Loop.get().submit(self._run(method, path, headers, body, timeout))
        try:
            return fut.result(timeout + 5.0)  # the deadline itself is enforced on the loop
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Timeout(f"no complete reply within {timeout:g}s") from None
        except BaseException:
            fut.cancel()
            raise

    async def arequest(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        return await self._run(method, path, headers, body, timeout)

    def close(self) -> None:
        """Sessions are shared per event loop (closed with it); nothing per LM to release."""


class MockTransport:
    """Answers every request with ``handler(Request)`` (a Response, or raises a transport error)."""

    def __init__(self, handler: Callable[[Request], Response], endpoint: Endpoint | None = None):
        self.handler = handler
        self.endpoint = endpoint
        self.requests: list[Request] = []

    def _url(self, path: str) -> str:
        return (self.endpoint.origin if self.endpoint else "") + path

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        req = Request(method, self._url(path), dict(headers), body, timeout)
        self.requests.append(req)
        return self.handler(req)

    async def arequest(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        return self.request(method, path, headers, body, timeout)

    def close(self) -> None:
        pass
