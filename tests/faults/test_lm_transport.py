"""Issue 13, finding 13: the LM transport in the real world (TLS with a private CA, proxies,
redirects, gzip) and the choice between the stdlib fast path and the library.

Real loopback servers only: FakeLMServer over TLS with a certificate generated here, a
tiny forwarding/CONNECT proxy written here, HostileServer for redirects and gzip.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dspex
from dspex.native import transport
from dspex.native._http import Endpoint
from dspex.testing import FakeLMServer
from dspex.testing.hostile_server import Exchange, HostileServer, chat_reply

pytestmark = pytest.mark.timeout(30)
MSGS = [{"role": "user", "content": "hi"}]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*PROXY_VARS, "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)


# --- a self-signed certificate for 127.0.0.1 -------------------------------------------------
@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dspex test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def _tls_server(cert: tuple[Path, Path]) -> Iterator[FakeLMServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with FakeLMServer(ssl_context=ctx) as server:
        yield server


@pytest.fixture
def tls_server(_tls_server: FakeLMServer) -> FakeLMServer:
    _tls_server.reset()
    return _tls_server


def test_tls_with_a_configured_ca_bundle(tls_server: FakeLMServer, cert: tuple[Path, Path]) -> None:
    tls_server.script(["secure sync", "secure async"])
    lm = dspex.LM("openai/fake", api_base=tls_server.base_url, ssl_ca_file=str(cert[0]), cache=False)
    assert isinstance(lm._transport, transport.LibraryTransport)
    assert lm.complete(MSGS).text == "secure sync"
    assert asyncio.run(lm.acomplete(MSGS)).text == "secure async"
    assert lm.to_spec()["ssl_ca_file"] == str(cert[0])  # travels to workers with the LM


def test_tls_ca_bundle_from_ssl_cert_file(tls_server: FakeLMServer, cert: tuple[Path, Path], monkeypatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    tls_server.script(["via env"])
    assert dspex.LM("openai/fake", api_base=tls_server.base_url, cache=False).complete(MSGS).text == "via env"


def test_tls_without_the_ca_is_a_clear_non_retryable_error(tls_server: FakeLMServer) -> None:
    lm = dspex.LM("openai/fake", api_base=tls_server.base_url, cache=False, num_retries=3)
    with pytest.raises(dspex.LMTransportError, match="ssl_ca_file") as info:
        lm.complete(MSGS)
    assert not info.value.retryable
    assert len(tls_server.requests) == 0


def test_tls_verify_false_skips_the_check(tls_server: FakeLMServer) -> None:
    tls_server.script(["unverified"])
    lm = dspex.LM("openai/fake", api_base=tls_server.base_url, verify=False, cache=False)
    assert lm.complete(MSGS).text == "unverified" and lm.to_spec()["verify"] is False


def test_tls_ca_bundle_that_does_not_exist_is_a_clear_error(tls_server: FakeLMServer, tmp_path: Path) -> None:
    lm = dspex.LM("openai/fake", api_base=tls_server.base_url, ssl_ca_file=str(tmp_path / "nope.pem"), cache=False)
    with pytest.raises(dspex.LMTransportError, match=r"nope\.pem") as info:
        lm.complete(MSGS)
    assert not info.value.retryable


# --- a loopback proxy: absolute-form forwarding and CONNECT tunnels ---------------------------
class Proxy:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.auth: list[str] = []
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        try:
            self._srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _handle(self, client: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        self.log.append(f"{method} {target}")
        self.auth += [h.split(":", 1)[1].strip() for h in lines[1:] if h.lower().startswith("proxy-authorization:")]
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
            if rest:
                upstream.sendall(rest)
            self._pump(client, upstream)
            return
        # absolute-form: one request per client connection, forwarded in origin form
        url = target.split("://", 1)[1]
        hostport, _, path = url.partition("/")
        host, port = hostport.rsplit(":", 1)
        headers = [h for h in lines[1:] if not h.lower().startswith(("proxy-", "connection:"))]
        upstream = socket.create_connection((host, int(port)))
        request = "\r\n".join([f"{method} /{path} {version}", *headers, "Connection: close", "", ""]).encode("latin-1")
        upstream.sendall(request + rest)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.close()


def test_call_through_an_http_proxy(fake_lm: FakeLMServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    fake_lm.script(["proxied sync", "proxied async"])
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    assert isinstance(lm._transport, transport.LibraryTransport)  # loopback, but a proxy is configured
    assert lm.complete(MSGS).text == "proxied sync"
    assert asyncio.run(lm.acomplete(MSGS)).text == "proxied async"
    assert [line.split(" ")[0] for line in proxy.log] == ["POST", "POST"]
    assert all(fake_lm.base_url in line for line in proxy.log)


def test_proxy_credentials_from_the_url(fake_lm: FakeLMServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("HTTP_PROXY", f"http://alice:s%40cret@127.0.0.1:{proxy.port}")
    fake_lm.script(["with auth"])
    assert dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False).complete(MSGS).text == "with auth"
    assert proxy.auth == ["Basic " + base64.b64encode(b"alice:s@cret").decode()]


def test_https_through_a_connect_proxy(
    tls_server: FakeLMServer, cert: tuple[Path, Path], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    tls_server.script(["tunnelled"])
    lm = dspex.LM("openai/fake", api_base=tls_server.base_url, ssl_ca_file=str(cert[0]), cache=False)
    assert lm.complete(MSGS).text == "tunnelled"
    assert proxy.log == [f"CONNECT 127.0.0.1:{tls_server.port}"]


def test_no_proxy_keeps_the_fast_path(fake_lm: FakeLMServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    assert isinstance(lm._transport, transport.FastTransport)
    assert lm.complete(MSGS).text
    assert proxy.log == []


# --- the choice --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url,fast",
    [
        ("http://127.0.0.1:8080/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://127.0.0.2:8080/v1", True),
        ("https://127.0.0.1:8080/v1", False),
        ("http://10.0.0.5:8080/v1", False),
        ("http://example.com/v1", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_fast_path_only_for_plain_http_to_loopback(url: str, fast: bool) -> None:
    chosen = transport.choose(Endpoint.parse(url))
    assert isinstance(chosen, transport.FastTransport if fast else transport.LibraryTransport)


# --- redirects and gzip on the fast path ------------------------------------------------------------
def test_redirect_from_a_loopback_server_is_followed(fake_lm: FakeLMServer) -> None:
    fake_lm.script(["after the redirect"])

    def redirect(ex: Exchange, req: dict) -> None:
        where = f"{fake_lm.base_url}/chat/completions"
        ex.send(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {where}\r\nContent-Length: 0\r\n\r\n".encode())

    with HostileServer(redirect) as server:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False)
        assert isinstance(lm._transport, transport.FastTransport)
        assert lm.complete(MSGS).text == "after the redirect"
    assert fake_lm.requests[0]["json"]["messages"] == MSGS  # the POST body survived the 307


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gzip_reply_on_the_fast_path(mode: str) -> None:
    def gzipped(ex: Exchange, req: dict) -> None:
        plain = chat_reply("squeezed")
        head, _, body = plain.partition(b"\r\n\r\n")
        packed = gzip.compress(body)
        head = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(packed)}".encode())
        ex.send(head + b"\r\nContent-Encoding: gzip\r\n\r\n" + packed)

    with HostileServer(gzipped) as server:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False)
        out = lm.complete(MSGS) if mode == "sync" else asyncio.run(lm.acomplete(MSGS))
    assert out.text == "squeezed"


# --- the library path keeps the same guarantees ----------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_library_path_has_one_total_deadline(mode: str, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex.testing.hostile_server import trickle

    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # forces the library path for a loopback server
    with HostileServer(trickle(every=0.1)) as server:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False, num_retries=0, timeout=1.0)
        assert isinstance(lm._transport, transport.LibraryTransport)
        with pytest.raises(dspex.LMTimeout):
            lm.complete(MSGS) if mode == "sync" else asyncio.run(lm.acomplete(MSGS))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_library_path_endless_headers_are_typed(mode: str, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex.testing.hostile_server import endless_headers

    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with HostileServer(endless_headers()) as server:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False, num_retries=0, timeout=10.0)
        with pytest.raises(dspex.LMBadResponse, match="malformed"):
            lm.complete(MSGS) if mode == "sync" else asyncio.run(lm.acomplete(MSGS))
