"""The extraction agent: batches uploads, fetches them concurrently, runs the CNN on its own thread
and publishes each item's features on the features topic, which every worker's catalogue reads."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import faust

from mmrec.features import ItemFeatures
from mmrec.item_codec import encode_item
from mmrec.media import MediaError
from mmrec.messages import InvalidMessage, MediaUpload, parse
from worker.app import Topics
from worker.dead_letters import DeadLetters
from worker.fetch import FetchError, MediaFetcher
from worker.runtime import Runtime

_BATCH_WAIT_S = 0.2


def attach_extraction(app: faust.App, topics: Topics, runtime: Runtime, dead: DeadLetters, fetcher: MediaFetcher) -> None:
    metrics = runtime.metrics

    async def fetch(upload: MediaUpload) -> bytes | FetchError:
        started = time.perf_counter()
        try:
            return await fetcher.fetch(upload.uri)
        except FetchError as exc:
            return exc
        finally:
            metrics.fetch_seconds.observe(time.perf_counter() - started)

    @app.agent(topics.uploads, name="extract")
    async def extract(stream: faust.StreamT) -> None:
        async for events in stream.take_events(runtime.settings.extract_batch_size, within=_BATCH_WAIT_S):
            uploads = []
            for event in events:
                metrics.consumed.labels(event.message.topic).inc()
                try:
                    uploads.append((event.message, parse(MediaUpload, event.value)))
                except InvalidMessage as exc:
                    await dead.reject(event.message, exc.reason, str(exc))
            fetched = await asyncio.gather(*(fetch(upload) for _, upload in uploads))
            ready = []
            for (message, upload), data in zip(uploads, fetched):
                if isinstance(data, FetchError):
                    await dead.reject(message, data.reason, data.message)
                else:
                    ready.append((message, upload, data))
            if not ready:
                continue
            started = time.perf_counter()
            results = await runtime.on_extract_thread(
                lambda: runtime.extractor().extract_many([(upload.media_id, data) for _, upload, data in ready])
            )
            metrics.extraction_seconds.observe(time.perf_counter() - started)
            metrics.extraction_batch.observe(len(ready))
            for (message, upload, _), result in zip(ready, results):
                if isinstance(result, MediaError):
                    await dead.reject(message, result.reason, result.message)
                elif result.media_type != upload.media_type:
                    await dead.reject(message, "media_type_mismatch", f"announced as {upload.media_type}, the content is {result.media_type}")
                else:
                    await publish(result, upload)

    async def publish(item: ItemFeatures, upload: MediaUpload) -> None:
        record = replace(item, extra={**item.extra, "uri": upload.uri, "uploaded_at": upload.created_at.isoformat()})
        await topics.features.send(key=item.media_id.encode(), value=encode_item(record))
        metrics.last_extraction.set_to_current_time()
