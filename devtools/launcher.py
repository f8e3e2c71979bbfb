"""Start, probe and stop a real `bentoml serve` process: used by the demo, the tests and the bench."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from govrisk.core import pseudonym
from govrisk.core.config import work_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

API_KEY = "demo-key-0123456789"  # the demo's and tests' key; never a production key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve govrisk.serving.service:Scoring` in its own process group, on a free loopback port.

    `service`: another BentoML service to serve the same way (bench/serving_floor.py's no-op one).
    `fault`: test-only challenger fault (`raise` or `sleep:<ms>`, devtools/faults.py): serves
    `devtools.fault_service:Scoring` instead. `cli`: start through `govrisk serve` (its supervision)
    rather than `bentoml serve` directly. Applicant pseudonym key: the environment's
    (`GOVRISK_APPLICANT_KEY(_FILE)`), else the demo key file of the work folder, created 0600.
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        *,
        api_keys: str = API_KEY,
        port: int | None = None,
        service: str = "govrisk.serving.service:Scoring",
        fault: str | None = None,
        cli: bool = False,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.service = "devtools.fault_service:Scoring" if fault else service
        self.cli = cli
        self.config_path = folder / "serving.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        self.env = dict(os.environ)
        self.env.update(
            GOVRISK_SERVING_CONFIG=str(self.config_path),
            GOVRISK_WORK=str(work_dir()),
            BENTOML_HOME=str(work_dir() / "bentoml"),
            GOVRISK_API_KEYS=api_keys,
            OMP_NUM_THREADS="1",
        )
        if fault:
            from devtools.faults import FAULT_ENV, parse

            parse(fault)
            self.env[FAULT_ENV] = fault
        if not (self.env.get(pseudonym.KEY_ENV) or self.env.get(pseudonym.KEY_FILE_ENV)):
            self.env[pseudonym.KEY_FILE_ENV] = str(pseudonym.ensure_demo_key())
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Server:
        """Start the process without waiting: several servers can then start side by side."""
        if self.cli:
            assert self.service == "govrisk.serving.service:Scoring", (
                "govrisk serve serves the Scoring service"
            )
            cmd = [str(Path(sys.executable).parent / "govrisk"), "serve", "--config", str(self.config_path)]
        else:
            cmd = [sys.executable, "-m", "bentoml", "serve", self.service]
        cmd += ["--port", str(self.port), "--host", "127.0.0.1"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float = 120) -> Server:
        """Wait for /readyz; stop the server and raise with its log tail if it exits or times out."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL the whole process group: the hard crash of the durability check."""
        if self.proc and self.proc.poll() is None:
            import psutil  # dev extra: only the tests and the bench kill servers

            # BentoML's workers run in sessions of their own: collect every descendant first.
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            psutil.wait_procs(procs, timeout=30)

    def terminate(self) -> None:
        """SIGTERM without waiting (the arbiter stops its workers gracefully); `stop` waits."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def post(self, path: str, body: Any, *, key: str | None = API_KEY, timeout: float = 30) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-API-Key"] = key
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)

    def post_raw(self, path: str, content: bytes, *, key: str | None = API_KEY) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-API-Key": key or ""}
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=30)
