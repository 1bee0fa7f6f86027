"""Start ``mlflow models serve`` on loopback for a test or a benchmark, and always stop it."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(model_uri: str, *, workers: int = 1, startup_timeout: float = 120.0, env=None, log_path=None):
    """Serve ``model_uri`` on 127.0.0.1 (a free port); yield the base URL; stop the server on exit.

    ``--env-manager local``: the server runs in this interpreter's environment. The
    wait for ``/ping`` is bounded by ``startup_timeout``; the server's process group
    is terminated (then killed) however the block ends.
    """
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` by name
    env = {**os.environ, **(env or {}), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(log_path or os.devnull, "wb")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with code {process.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow models serve did not answer /ping within {startup_timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        log.close()


def invocation_body(images: list[bytes], column: str = "image") -> bytes:
    """A ``dataframe_split`` request with the images base64-encoded, as MLflow's docs show for binary columns."""
    rows = [[base64.b64encode(image).decode("ascii")] for image in images]
    return json.dumps({"dataframe_split": {"columns": [column], "data": rows}}).encode()


def invoke(url: str, body: bytes, timeout: float = 60.0) -> list:
    request = urllib.request.Request(
        url + "/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())["predictions"]


def jpeg_crops(photos, n_per_photo=8, size=80, seed=0):
    """Real 80-px JPEG crops of the sample photos, as encoded bytes, with the photo index as label."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, photo in enumerate(photos):
        for _ in range(n_per_photo):
            top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            buffer = io.BytesIO()
            Image.fromarray(photo[top : top + size, left : left + size]).save(buffer, format="JPEG", quality=90)
            images.append(buffer.getvalue())
            labels.append(label)
    return images, np.asarray(labels)
