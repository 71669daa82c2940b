"""The shared session: environment proxy and CA settings honoured, read once per origin, a pool
large enough for the local server's concurrency, and no ``.netrc`` credentials."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bridge.httpclient import POOL_SIZE, new_session


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def settings_for(session: requests.Session, url: str) -> dict[str, object]:
    return dict(session.merge_environment_settings(url, {}, None, None, None))


def test_environment_proxy_is_honoured(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    session = new_session()
    proxies = settings_for(session, "https://contoso.service-now.com/api/now/table/incident")["proxies"]
    assert proxies["https"] == "http://proxy.example:3128"  # type: ignore[index]


def test_no_proxy_is_honoured(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "service-now.com")
    session = new_session()
    assert "https" not in settings_for(session, "https://contoso.service-now.com/x")["proxies"]  # type: ignore[operator]
    assert settings_for(session, "https://login.microsoftonline.com/x")["proxies"]["https"] == (  # type: ignore[index]
        "http://proxy.example:3128"
    )


def test_ca_bundle_from_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read here")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    session = new_session()
    assert settings_for(session, "https://contoso.service-now.com/x")["verify"] == str(bundle)
    # An explicit verify=False from the caller is not overridden by the environment.
    assert dict(session.merge_environment_settings("https://contoso.service-now.com/x", {}, None, False, None))[
        "verify"
    ] is False


def test_environment_is_read_once_per_origin(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = requests.utils.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.utils, "get_environ_proxies", counting)
    session = new_session()
    for path in ("a", "b", "c?x=1"):
        settings_for(session, f"https://contoso.service-now.com/{path}")
    settings_for(session, "https://login.microsoftonline.com/common")
    assert len(calls) == 2


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.headers.get("Authorization") or "none").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_netrc_credentials_are_never_sent(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, echo_url: str
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    plain = requests.Session()
    assert plain.get(echo_url, timeout=5).text.startswith("Basic ")  # what a stock session would send
    assert new_session().get(echo_url, timeout=5).text == "none"


def test_pool_holds_as_many_connections_as_the_server_serves() -> None:
    session = new_session()
    for prefix in ("https://", "http://"):
        adapter = session.get_adapter(prefix + "example.com/")
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == POOL_SIZE
    assert POOL_SIZE >= 64
