"""Extraction failures through the real extraction agent (faust's test_context, the real fetcher and
CNN at 64 px): an unreachable URL, a stalling server, corrupt, truncated, unsupported and unknown
files, a decompression bomb and oversized videos are each dead-lettered once with their reason, and
valid uploads queued behind them are still extracted: nothing stalls the agent."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from unittest.mock import AsyncMock, patch

import pytest
from aiohttp import web

from mmrec.item_codec import decode_item
from mmrec.messages import MediaUpload
from mmrec.samples import sample_image, sample_video
from tests.test_agents import eventually, make_worker
from tests.test_media import png_header_only
from worker.embedded_broker import free_port


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """/ok.png: a valid image; /stall: answers after 30 s."""
    image = sample_image("coffee.png").read_bytes()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    async def stall(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=image)

    app = web.Application()
    app.add_routes([web.get("/ok.png", ok), web.get("/stall", stall)])
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # the stalled handler is not waited for
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def upload(media_id: str, uri: str, media_type: str = "image") -> bytes:
    return MediaUpload(media_id=media_id, uri=uri, media_type=media_type, created_at=datetime.now(timezone.utc)).to_json()


async def test_each_failure_is_dead_lettered_with_its_reason_and_valid_uploads_after_them_are_extracted(tmp_path: Path, server: str):
    media = tmp_path / "media"
    media.mkdir()
    chelsea = sample_image("chelsea.png").read_bytes()
    (media / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (media / "truncated.png").write_bytes(chelsea[: len(chelsea) // 2])
    (media / "anim.gif").write_bytes(b"GIF89a" + b"\x00" * 64)
    (media / "noise.bin").write_bytes(b"\x13\x37" * 100)
    (media / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # 10 G pixels declared in ~100 bytes
    shutil.copy(sample_video("bikes.mp4"), media / "long.mp4")  # 10 s, 510 kB
    shutil.copy(sample_video("bigbuckbunny.mp4"), media / "big.mp4")  # 1.06 MB
    shutil.copy(sample_image("coffee.png"), media / "good.png")
    shutil.copy(sample_video("carphone_pristine.mp4"), media / "short.mp4")  # 4 s, 589 kB
    closed = free_port("127.0.0.1")

    expected = {
        "unreachable": (f"http://127.0.0.1:{closed}/a.png", "image", "fetch_failed"),
        "stalling": (f"{server}/stall", "image", "fetch_timeout"),
        "corrupt": ((media / "corrupt.png").as_uri(), "image", "corrupt"),
        "truncated": ((media / "truncated.png").as_uri(), "image", "truncated"),
        "gif": ((media / "anim.gif").as_uri(), "image", "unsupported_format"),
        "noise": ((media / "noise.bin").as_uri(), "image", "unknown_format"),
        "bomb": ((media / "bomb.png").as_uri(), "image", "too_many_pixels"),
        "long-video": ((media / "long.mp4").as_uri(), "video", "too_long"),
        "big-video": ((media / "big.mp4").as_uri(), "video", "too_many_bytes"),
        "missing": ((media / "missing.png").as_uri(), "image", "not_found"),
    }
    valid = {
        "good-file": ((media / "good.png").as_uri(), "image"),
        "good-http": (f"{server}/ok.png", "image"),
        "good-video": ((media / "short.mp4").as_uri(), "video"),
    }
    worker = make_worker(
        tmp_path / "worker",
        input_size=64,
        extract_batch_size=4,
        allowed_uri_schemes=("file", "http"),
        media_roots=(media,),
        allow_private_networks=True,  # the local test servers (and the closed port) are on loopback
        fetch_timeout_s=1.0,
        max_video_seconds=6.0,
        max_media_bytes=800_000,
        torch_threads=1,
    )
    try:
        with patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead, patch.object(worker.topics.features, "send", new=AsyncMock()) as features:
            started = time.monotonic()
            async with worker.app.agents["extract"].test_context() as agent:
                for media_id, (uri, kind, _) in expected.items():
                    await agent.put(key=media_id.encode(), value=upload(media_id, uri, kind))
                for media_id, (uri, kind) in valid.items():
                    await agent.put(key=media_id.encode(), value=upload(media_id, uri, kind))
                await eventually(lambda: dead.call_count >= len(expected) and features.call_count >= len(valid), timeout=60)
            elapsed = time.monotonic() - started
        letters = [json.loads(call.kwargs["value"]) for call in dead.call_args_list]
        assert len(letters) == len(expected)
        by_id = {json.loads(base64.b64decode(letter["value_b64"]))["media_id"]: letter for letter in letters}
        assert {m: letter["reason"] for m, letter in by_id.items()} == {m: reason for m, (_, _, reason) in expected.items()}
        assert all(letter["error"] and letter["key_b64"] for letter in letters)
        items = [decode_item(call.kwargs["value"]) for call in features.call_args_list]
        assert sorted(item.media_id for item in items) == sorted(valid)
        assert next(i for i in items if i.media_id == "good-video").media_type == "video"
        assert elapsed < 45, f"the agent took {elapsed:.0f} s: something stalled it"
    finally:
        worker.runtime.close()
