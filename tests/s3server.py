"""A real S3 endpoint for tests: moto's server on loopback, in a subprocess of its own.

    with moto_server() as s3:
        s3.url            # "http://127.0.0.1:PORT"
        s3.environ()      # AWS_* variables that point an S3 client at it

The server listens on 127.0.0.1 only and is stopped (by its PID) on leaving the block.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class S3Endpoint:
    host: str
    port: int
    pid: int
    access_key: str = "facefleet-test-key"
    secret_key: str = "facefleet-test-secret"
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environ(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the OS picks it; closed again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP answer, even an error, means the server is up
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def moto_server() -> Iterator[S3Endpoint]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = tempfile.TemporaryFile()  # its request log; a pipe nobody reads would fill up and block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        endpoint = S3Endpoint(HOST, port, proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(endpoint.url):
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RuntimeError(f"moto server exited with {proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer on {endpoint.url} within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield endpoint
    finally:
        _stop(proc)
        log.close()
