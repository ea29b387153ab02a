"""Child processes the demo and the benchmarks start (a worker): stopped the way Kubernetes would."""
from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after grace_s seconds; reaps it either way."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
