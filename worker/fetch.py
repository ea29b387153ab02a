"""Fetch the bytes of an uploaded media URI under the worker's limits.

- Schemes: only those allowed (http and https by default; `file` and plain paths only when enabled,
  and then only below the configured media roots, symlinks resolved).
- Hosts: an allow-list if configured; and unless private networks are allowed, every address a host
  resolves to must be public. The check sits in the connector's resolver, so it also covers each
  redirect and cannot be bypassed by DNS answers changing between check and connect.
- Size: the body is read in chunks and abandoned past the byte limit; a time limit covers the whole
  fetch, redirects included.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from mmrec.settings import Settings


class FetchError(Exception):
    """A media URI that could not be fetched; `reason` is the dead-letter code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default, then refuses hosts with any non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        denied = [r["host"] for r in results if not is_public(r["host"])]
        if denied:
            raise FetchError("host_denied", f"{host} resolves to non-public address {denied[0]}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class MediaFetcher:
    """Async fetcher; one per worker (holds a connection pool). Call close() when done."""

    def __init__(self, settings: Settings) -> None:
        self.schemes = {s.lower() for s in settings.allowed_uri_schemes}
        self.hosts = {h.lower() for h in settings.allowed_hosts}
        self.roots = [root.resolve() for root in settings.media_roots]
        self.max_bytes = settings.max_media_bytes
        self.max_redirects = settings.max_redirects
        self.timeout = settings.fetch_timeout_s
        self.private_ok = settings.allow_private_networks
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, uri: str) -> bytes:
        """The media bytes; raises FetchError with a reason code."""
        parts = urlsplit(uri)
        scheme = parts.scheme.lower() if len(parts.scheme) > 1 else "file"  # "C:" is no scheme
        if scheme not in self.schemes:
            raise FetchError("uri_scheme_denied", f"scheme {scheme!r} is not allowed (allowed: {sorted(self.schemes)})")
        try:
            async with asyncio.timeout(self.timeout):
                if scheme == "file":
                    path = unquote(parts.path) if parts.scheme else uri
                    return await asyncio.to_thread(self._read_file, Path(path))
                return await self._fetch_http(uri)
        except TimeoutError:
            raise FetchError("fetch_timeout", f"fetching {uri} took longer than {self.timeout} s") from None

    def _read_file(self, path: Path) -> bytes:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise FetchError("path_denied", f"{path} is outside the allowed media roots")
        try:
            size = resolved.stat().st_size
            if size > self.max_bytes:
                raise FetchError("too_many_bytes", f"{path} has {size} bytes, the limit is {self.max_bytes}")
            with resolved.open("rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise FetchError("not_found", f"{path} does not exist") from None
        except OSError as exc:
            raise FetchError("fetch_failed", f"{path}: {exc.strerror or exc}") from None
        if len(data) > self.max_bytes:
            raise FetchError("too_many_bytes", f"{path} is larger than {self.max_bytes} bytes")
        return data

    async def _fetch_http(self, uri: str) -> bytes:
        session = self._client()
        for _ in range(self.max_redirects + 1):
            self._check_host(uri)
            try:
                async with session.get(uri, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        uri = urljoin(uri, response.headers["Location"])
                        if urlsplit(uri).scheme.lower() not in self.schemes - {"file"}:
                            raise FetchError("uri_scheme_denied", f"redirect to a denied scheme: {uri}")
                        continue
                    if response.status == 404:
                        raise FetchError("not_found", f"{uri}: HTTP 404")
                    if response.status != 200:
                        raise FetchError("fetch_failed", f"{uri}: HTTP {response.status}")
                    return await self._read_body(response, uri)
            except aiohttp.ClientError as exc:
                raise FetchError("fetch_failed", f"{uri}: {exc}") from None
        raise FetchError("too_many_redirects", f"more than {self.max_redirects} redirects")

    async def _read_body(self, response: aiohttp.ClientResponse, uri: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise FetchError("too_many_bytes", f"{uri} declares {declared} bytes, the limit is {self.max_bytes}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError("too_many_bytes", f"{uri} is larger than {self.max_bytes} bytes")
        return bytes(body)

    def _check_host(self, uri: str) -> None:
        host = (urlsplit(uri).hostname or "").lower()
        if not host:
            raise FetchError("invalid_uri", f"no host in {uri}")
        if self.hosts and host not in self.hosts:
            raise FetchError("host_denied", f"host {host} is not in the allowed hosts")
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: the resolver checks its addresses
        if not self.private_ok and not is_public(str(literal)):  # IP literals never reach the resolver
            raise FetchError("host_denied", f"{host} is not a public address")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self.private_ok else PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=32),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,  # a compressed body could expand past the byte limit
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
