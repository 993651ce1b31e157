"""pbxbrain as a real process (``pbxbrain run``), for end-to-end tests."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.asterisk import REPO, wait_for


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent (the test run) dies.

    A pbxbrain left running by an interrupted run would register the same Stasis app and
    steal the next run's events (calls then hang with no events): never leave one behind.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Daemon:
    """A pbxbrain process with its own config, database and HTTP port."""

    config: Path
    database_url: str
    port: int
    recordings: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pbxbrain", "run", "--config", str(self.config)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks
        )
        log.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of GET /v1/health; (0, {}) when nothing listens."""
        try:
            with urllib.request.urlopen(self.base_url + "/v1/health", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError):
            return 0, {}

    def wait_ready(self, timeout_s: float = 30.0, *,
                   only: Collection[str] | None = None) -> dict[str, Any]:
        """Wait until /v1/health answers 200, or until the ``only`` checks are ok."""
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            assert self.proc.poll() is None, f"pbxbrain exited early:\n{self.log_tail()}"
            status, body = self.health()
            if only is not None:
                checks = body.get("checks", {})
                return body if all(checks.get(name) == "ok" for name in only) else None
            return body if status == 200 else None

        what = f"pbxbrain's {', '.join(only)} to be ok" if only else "/v1/health to answer 200"
        return wait_for(what, ready, timeout_s)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"pbxbrain did not stop on SIGTERM:\n{self.log_tail()}"
                                 ) from None

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
