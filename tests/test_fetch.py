"""Media fetching: schemes, roots, hosts, sizes, redirects and time limits."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from mmrec.settings import Settings
from worker.fetch import FetchError, MediaFetcher, is_public


def fetcher(**overrides: object) -> MediaFetcher:
    return MediaFetcher(Settings(**overrides))


async def reason_of(fetch: MediaFetcher, uri: str) -> str:
    with pytest.raises(FetchError) as info:
        await fetch.fetch(uri)
    await fetch.close()
    return info.value.reason


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def to_file(_: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/slow", slow), web.get("/loop", loop), web.get("/to-file", to_file)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_local_files_need_the_scheme_and_a_root(tmp_path: Path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(b"png!")
    (tmp_path / "secret").write_bytes(b"no")
    assert await reason_of(fetcher(), str(media / "a.png")) == "uri_scheme_denied"
    allowed = {"allowed_uri_schemes": ("file",), "media_roots": (media,)}
    assert await fetcher(**allowed).fetch(f"file://{media / 'a.png'}") == b"png!"
    assert await fetcher(**allowed).fetch(str(media / "a.png")) == b"png!"
    assert await reason_of(fetcher(**allowed), str(media / ".." / "secret")) == "path_denied"
    (media / "link").symlink_to(tmp_path / "secret")
    assert await reason_of(fetcher(**allowed), str(media / "link")) == "path_denied"
    assert await reason_of(fetcher(**allowed), str(media / "missing.png")) == "not_found"
    assert await reason_of(fetcher(**allowed, max_media_bytes=3), str(media / "a.png")) == "too_many_bytes"


def test_public_address_check():
    assert is_public("93.184.216.34") and is_public("2606:4700::1111")
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1"):
        assert not is_public(address), address


async def test_private_hosts_are_denied_by_default(server: str):
    assert await reason_of(fetcher(), f"{server}/ok") == "host_denied"
    assert await reason_of(fetcher(), f"{server.replace('127.0.0.1', 'localhost')}/ok") == "host_denied"
    assert await reason_of(fetcher(allowed_hosts=("cdn.example.com",)), "https://other.example.com/a.png") == "host_denied"
    assert await reason_of(fetcher(), "ftp://example.com/a.png") == "uri_scheme_denied"


async def test_http_fetch_limits(server: str):
    private = {"allow_private_networks": True}
    ok = fetcher(**private)
    assert await ok.fetch(f"{server}/ok") == b"x" * 1000
    await ok.close()
    assert await reason_of(fetcher(**private), f"{server}/missing") == "not_found"
    assert await reason_of(fetcher(**private, max_media_bytes=999), f"{server}/ok") == "too_many_bytes"
    assert await reason_of(fetcher(**private), f"{server}/loop") == "too_many_redirects"
    assert await reason_of(fetcher(**private), f"{server}/to-file") == "uri_scheme_denied"
    assert await reason_of(fetcher(**private, fetch_timeout_s=0.3), f"{server}/slow") == "fetch_timeout"
