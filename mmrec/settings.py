"""The one validated settings object, read from MMREC_* environment variables.

Nothing reads the environment anywhere else: build a Settings once at the entry point and pass it
(or the parts a component needs) down.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mmrec.model import ModelConfig, Objective, Readout
from mmrec.online import OnlineConfig
from mmrec.retrieval import RetrievalConfig


def _split_commas(value: object) -> object:
    """'a, b' -> ('a', 'b'): list settings are comma-separated in the environment."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]
PathList = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_split_commas)]


class ModelSettings(BaseModel):
    n_layers: int = Field(3, ge=1, le=5, description="N, conv layers of the backbone tapped for features.")
    kernel_size: int = Field(3, ge=1, le=7, description="m, width of the per-user interest and attention kernels (odd).")
    channels: int = Field(8, ge=1, le=64, description="d, channels per layer after the channel projection (at most the narrowest tapped layer has: 32 for N = 2-3, 24 for N = 4-5).")
    pool: int = Field(2, ge=1, le=4, description="p, max-pool window and stride (claim 4).")
    readout: Readout = Field("spanning", description="'spanning' (kernel = user channel factor x K) or 'per_channel' (K per channel, max over channels).")
    collab_dim: int = Field(0, ge=0, le=256, description="k, collaborative factors per user and item (the hybrid extension, docs/design.md); 0 = the faithful patent model.")
    objective: Objective = Field("pointwise", description="Loss of training and of the online step: 'pointwise' (weighted BCE over every event, the faithful model) or 'pairwise' (BPR: engaged items above sampled ones; the hybrid extension).")

    @model_validator(mode="after")
    def _kernel_is_odd(self) -> ModelSettings:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a 'same' convolution), got {self.kernel_size}")
        return self


class ExtractionSettings(BaseModel):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the CNN runs; 'auto' takes CUDA when present.")
    input_size: int = Field(224, ge=32, le=1024, description="Square input side the backbone sees, in pixels.")
    max_grid: int = Field(14, ge=1, le=128, description="Stored maps are average-pooled to at most this many cells per side.")
    projection_path: Path | None = Field(None, description="The channel projection (safetensors, from `mmrec fit-projection`); unset: the one shipped in mmrec/assets, fitted on scikit-image's sample images. Its content hash is part of the feature version, so every role and `mmrec train` must name the same file.")
    extract_batch_size: int = Field(8, ge=1, le=1024, description="Images (or video frames) per CNN forward pass; a part-filled pass is padded to this size so features do not depend on batch company (1 = lowest latency).")
    decode_threads: int = Field(4, ge=1, le=256, description="Media of one CNN batch decoded at once (Pillow and FFmpeg release the GIL); with the CNN on a GPU, decoding is the limit. Each thread holds one decoded image: peak memory grows with it (at most max_pixels x 3 bytes each).")
    video_frames: int = Field(8, ge=1, le=64, description="Evenly spaced frames sampled from a video.")
    video_keyframes: int = Field(4, ge=0, le=64, description="Keyframes added to the evenly spaced ones (at most).")
    max_media_bytes: int = Field(100_000_000, ge=1, description="Media larger than this many bytes are refused (MediaTooLarge).")
    max_pixels: int = Field(64_000_000, ge=1, description="Images or video frames whose header declares more pixels are refused before decoding (decompression bombs).")
    max_video_seconds: float = Field(600.0, gt=0, description="Videos longer than this are refused.")
    max_video_frames: int = Field(36_000, ge=1, description="Videos with more frames than this are refused.")

    @model_validator(mode="after")
    def _projection_exists(self) -> ExtractionSettings:
        if self.projection_path is not None and not self.projection_path.is_file():
            raise ValueError(f"projection_path {str(self.projection_path)!r} is not a file (write one with `mmrec fit-projection --media`)")
        return self


class LearningSettings(BaseModel):
    learning_rate: float = Field(0.1, gt=0, le=10, description="Step size of the online Adagrad step.")
    l2: float = Field(1e-3, ge=0, le=10, description="Pull of each online step toward the shared prior.")
    negatives: int = Field(4, ge=0, le=256, description="Catalogue items sampled as negatives for each positive event.")
    recent_events: int = Field(16, ge=1, le=1024, description="Event ids remembered per user to skip re-sent events.")
    seen_media: int = Field(32, ge=0, le=1024, description="Media a user engaged with, kept out of their recommendations.")
    pending_limit: int = Field(64, ge=1, le=10_000, description="Events per user that may wait for their media's features; beyond, they are dead-lettered.")
    pending_max_wait_s: float = Field(3600.0, gt=0, description="How long an event waits for its media's features before it is dead-lettered.")
    pending_sweep_s: float = Field(10.0, gt=0, le=3600, description="How often waiting events are looked at again (besides when their media arrive).")
    learn_batch: int = Field(64, ge=1, le=4096, description="Interactions handled together: one model-thread call and one state read and write per user for the batch.")
    learn_batch_wait_ms: float = Field(2.0, gt=0, le=1000, description="How long a batch of interactions waits to fill before it is handled as it is.")

    def online_config(self) -> OnlineConfig:
        return OnlineConfig(
            learning_rate=self.learning_rate,
            l2=self.l2,
            recent_events=self.recent_events,
            seen_media=self.seen_media,
        )


class RecommendSettings(BaseModel):
    top_k: int = Field(20, ge=1, le=1000, description="Items in each published recommendation list.")
    refresh_debounce_ms: float = Field(20.0, ge=0, le=60_000, description="Events of one user closer than this are answered with one refresh.")
    refresh_batch: int = Field(64, ge=1, le=4096, description="Users scored together in one refresh batch.")
    refresh_fill_ms: float = Field(
        100.0, ge=0, le=60_000,
        description="When the longest-pending user's event is older than this (the worker is behind), the refresher waits up to this long again for a full batch, which costs less per user; 0: never wait (docs/design.md, Streaming).",
    )
    active_user_window_s: float = Field(3600.0, ge=0, description="Users active this recently get a refresh when new media arrive.")


class RetrievalSettings(BaseModel):
    retrieval: Literal["auto", "exact", "shortlist"] = Field("auto", description="How a refresh ranks the catalogue: 'exact' scores every item; 'shortlist' ranks every item by a linear surrogate of the score and re-scores only each user's best few exactly (docs/design.md, Retrieval); 'auto' = exact below retrieval_min_items items.")
    retrieval_min_items: int = Field(5_000, ge=0, description="With retrieval=auto, catalogues of at least this many items are ranked through the shortlist.")
    retrieval_shortlist_factor: int = Field(8, ge=1, le=1000, description="Items re-scored exactly per item published: a shortlist of factor x top_k items (at least retrieval_shortlist_min).")
    retrieval_shortlist_min: int = Field(100, ge=1, le=100_000, description="Smallest shortlist re-scored exactly per user.")
    retrieval_partition_min_items: int = Field(5_000_000, ge=1, description="Catalogues of at least this many items get an inverted-file index (k-means lists) over the surrogate, so a refresh reads a few percent of the item vectors (measured at 1M items: recall@100 0.61 at probe 0.03, 0.84 at 0.1, against 0.93 for the full scan at about the latency of probe 0.1; docs/design.md).")
    retrieval_partition_probe: float = Field(0.03, gt=0, le=1, description="Fraction of the inverted-file lists a refresh reads (more: higher recall, slower).")
    retrieval_refine_rounds: int = Field(2, ge=1, le=10, description="Rounds of exact re-scoring that choose a shortlist: the first takes the surrogate's best, each later one fits the exact scores so far as the surrogate plus a linear function of the item vectors (per user) and takes the candidates that fit ranks best (measured at 1M items, 800 items re-scored: recall@100 0.962 with 2 rounds, 0.967 with 3, each round ~0.5 ms more; 1 round, 1,000 items: 0.934; docs/design.md). 1 = the surrogate's best only.")
    retrieval_candidate_factor: int = Field(10, ge=1, le=1000, description="Rounds after the first choose among the surrogate's best factor x shortlist items.")
    retrieval_projection_min_items: int = Field(200_000, ge=1, description="Catalogues of at least this many items are scanned through a projection of the surrogate's item vectors onto their leading principal directions (fewer floats read per item); the candidates it finds are ranked by the full surrogate.")
    retrieval_projection_energy: float = Field(0.99, gt=0, le=1, description="Share of the item vectors' variance (about their mean) the projection keeps; it sets how many directions are scanned.")
    retrieval_scan_precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description="Precision the projected coordinates are kept and scanned in. bfloat16 reads half the bytes, and is faster only where the CPU has native bfloat16 dot products (measured at 1M items, 2 threads, EPYC with AVX512-BF16: a refresh 0.87x the time; with oneDNN limited to AVX2 the scan 2.5x slower; at 1 thread no gain); 'auto' times both, interleaved, when the projection is built and keeps bfloat16 only if it is at least 1.1x faster.")

    def retrieval_config(self) -> RetrievalConfig:
        return RetrievalConfig(
            mode=self.retrieval,
            min_items=self.retrieval_min_items,
            shortlist_factor=self.retrieval_shortlist_factor,
            shortlist_min=self.retrieval_shortlist_min,
            partition_min_items=self.retrieval_partition_min_items,
            partition_probe=self.retrieval_partition_probe,
            refine_rounds=self.retrieval_refine_rounds,
            candidate_factor=self.retrieval_candidate_factor,
            projection_min_items=self.retrieval_projection_min_items,
            projection_energy=self.retrieval_projection_energy,
            scan_precision=self.retrieval_scan_precision,
        )


class KafkaSettings(BaseModel):
    bootstrap_servers: str | None = Field(None, description="Comma-separated host:port list; unset = the embedded broker (demo only).")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="How the worker talks to the brokers.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field("SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (or use sasl_password_file); never logged.")
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password (e.g. a mounted Secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client key for mutual TLS.")
    client_id: str = Field("mmrec", description="Kafka client id (shows in broker logs and quotas).")
    group_id: str = Field("mmrec", description="Consumer group of the workers; also prefixes internal topics.")
    group_instance_id: str | None = Field(None, description="Static group membership id (e.g. the pod name) for fast restarts.")
    session_timeout_s: float = Field(10.0, gt=0, le=300, description="Consumer group session timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60, description="Consumer group heartbeat interval.")
    commit_interval_s: float = Field(1.0, gt=0, le=60, description="How often processed offsets are committed.")
    producer_max_batch_size: int = Field(16384, ge=1, description="Producer batch bytes; 1 = one record per batch (needed on Tansu for correct end offsets).")
    producer_linger_ms: float = Field(5.0, ge=0, le=1000, description="How long the producer lets records gather before it sends a request (Kafka's own default since 4.0): fewer, larger requests; 0 sends each batch at once.")
    create_topics: bool = Field(False, description="Create the source and output topics at start if missing.")
    partitions: int = Field(8, ge=1, le=10_000, description="Partitions of the keyed topics and tables; users are spread over them.")
    replication_factor: int = Field(1, ge=1, le=16, description="Replication of topics the worker creates.")
    topic_uploads: str = Field("media.uploads", description="Media upload announcements (key: media id).")
    topic_interactions: str = Field("user.interactions", description="User interaction events (key: user id).")
    topic_recommendations: str = Field("user.recommendations", description="Published recommendations (key: user id).")
    topic_dead_letter: str = Field("mmrec.dead-letter", description="Messages that could not be processed, with the reason.")
    topic_features: str = Field("mmrec.item-features", description="Extracted features, read by every worker (key: media id).")
    topic_wakeups: str = Field("mmrec.pending-wakeups", description="Internal: wakes users whose events wait for media (key: user id).")
    topic_user_updates: str = Field("mmrec.user-updates", description="Internal: learn -> score, a user's new state and the event that caused it (key: user id; split roles only).")

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and (self.sasl_password or self.sasl_password_file)):
            raise ValueError("SASL needs sasl_username and sasl_password or sasl_password_file")
        return self

    def password(self) -> str | None:
        """The SASL password from the setting or the file it names."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None


class WorkerSettings(BaseModel):
    role: Literal["all", "extract", "learn", "score"] = Field("all", description="Which agents this worker runs: extract (uploads -> features), learn (interactions -> user state -> user updates), score (user updates and new media -> recommendations), or all of them in one process (the default for one machine).")
    table_store: Literal["rocksdb", "memory"] = Field("rocksdb", description="Where user-state tables live between restarts (rocksdb keeps them on local disk).")
    rocksdb_write_buffer_mb: int = Field(4, ge=1, le=1024, description="RocksDB memtable size per table partition (two of them at most); writes stay in memory until one fills. faust's default is 64.")
    rocksdb_block_cache_mb: int = Field(8, ge=1, le=16384, description="RocksDB read cache per table partition. faust's default is 2048. A worker's RocksDB memory is at most (2 x write buffer + cache) x 2 tables x partitions held.")
    web_host: str = Field("0.0.0.0", description="Address of the metrics and health HTTP server.")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the metrics and health HTTP server.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Worker log level.")
    torch_threads: int = Field(0, ge=0, le=256, description="Threads torch uses in this process (0: torch's default, one per core); set to the pod's CPU limit.")


class FetchSettings(BaseModel):
    fetch_timeout_s: float = Field(30.0, gt=0, le=600, description="Time limit for fetching one media file.")
    allowed_uri_schemes: CommaList = Field(("http", "https"), description="URI schemes uploads may use (comma-separated): http, https, file.")
    allowed_hosts: CommaList = Field((), description="If set, the only hosts uploads may be fetched from (comma-separated).")
    allow_private_networks: bool = Field(False, description="Allow fetching from loopback, private, link-local and other non-public addresses.")
    max_redirects: int = Field(3, ge=0, le=20, description="Redirects followed per fetch (each one re-checked).")
    media_roots: PathList = Field((), description="Folders file URIs and paths may read from (comma-separated); none = no local files.")


class Settings(
    ModelSettings,
    ExtractionSettings,
    LearningSettings,
    RecommendSettings,
    RetrievalSettings,
    KafkaSettings,
    WorkerSettings,
    FetchSettings,
    BaseSettings,
):
    """Every setting of mmrec. Environment: MMREC_<NAME> (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MMREC_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("var"), description="Local state: feature store, projection, model artifacts.")
    model_path: Path | None = Field(None, description="Model artifact from `mmrec train`; unset = the untrained prior.")
    model_sha256: str | None = Field(None, description="If set, the artifact's content digest must start with this (pins the model).")

    def to_env(self) -> dict[str, str]:
        """These settings as MMREC_* environment variables (secrets included: for child processes)."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"MMREC_{name.upper()}"] = str(value)
        return env

    def scorer_config(self) -> ModelConfig:
        return ModelConfig(
            n_layers=self.n_layers,
            kernel_size=self.kernel_size,
            channels=self.channels,
            pool=self.pool,
            readout=self.readout,
            collab_dim=self.collab_dim,
            objective=self.objective,
        )
