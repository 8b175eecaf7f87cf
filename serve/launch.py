"""Start `python -m serve.run` as a subprocess and wait until it answers: for scripts, tests and benchmarks."""

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(directory, *options: str, wait_s: float = 180) -> tuple[subprocess.Popen, str]:
    """The server process and its base URL, once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "serve.run", str(directory), "--port", str(port), *options]
    # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would block it.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    log.seek(0)
    raise RuntimeError(f"server did not come up within {wait_s:g} s: {log.read()[-3000:]}")


def stop_server(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
