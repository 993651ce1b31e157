"""The real Asterisk sandbox and SIPp, for end-to-end tests.

Everything waits on events with deadlines (SIPp's exit status, ARI answers, the journal
row appearing), never on fixed sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
SANDBOX_SH = REPO / "scripts" / "sandbox.sh"
SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
ARI = "http://127.0.0.1:8088/ari"
ARI_AUTH = "pbxbrain:pbxbrain-ari-secret"
SCENARIO_DIR_IN_CHROOT = "/opt/pbxbrain-tests"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 15.0,
             interval_s: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")


def sandbox(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run scripts/sandbox.sh."""
    return subprocess.run(["bash", str(SANDBOX_SH), *args], check=check, text=True,
                          capture_output=True, timeout=300)


def ari_get(path: str) -> Any:
    """GET an ARI resource with the sandbox credentials."""
    req = urllib.request.Request(ARI + path)
    req.add_header("Authorization",
                   "Basic " + base64.b64encode(ARI_AUTH.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


@dataclass
class SippResult:
    """What SIPp did: its exit code (0 = every call as scripted) and its output."""

    returncode: int
    output: str
    errors: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class Phone:
    """A SIPp phone running in the background."""

    extension: str
    proc: subprocess.Popen[bytes]
    errors_path: Path
    timeout_s: float

    def wait(self) -> SippResult:
        """Wait for SIPp to finish its calls (or its timeout) and say how it went."""
        try:
            out, _ = self.proc.communicate(timeout=self.timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        errors = self.errors_path.read_text(errors="replace") if self.errors_path.exists() else ""
        self.errors_path.unlink(missing_ok=True)
        return SippResult(self.proc.returncode, out.decode(errors="replace")[-3000:], errors)

    def stop(self) -> None:
        """Kill it if it is still running (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


#: Where the PSTN's SIPp callers come from: the trunk into the Stasis app (``pstn``), and
#: the trunk whose calls the dialplan hands to pbxbrain by FastAGI (``pstn-agi``).
PSTN = "127.0.0.2"
PSTN_AGI = "127.0.0.4"


@dataclass
class Sandbox:
    """A running sandbox Asterisk."""

    root: Path

    def rx(self, command: str) -> str:
        return sandbox("rx", command).stdout

    def channels(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = ari_get("/channels")
        return result

    def bridges(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = ari_get("/bridges")
        return result

    def install_scenarios(self) -> None:
        target = self.root / SCENARIO_DIR_IN_CHROOT.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for xml in SCENARIOS.glob("*.xml"):
            shutil.copy(xml, target / xml.name)

    def sipp(self, scenario: str, *args: str, timeout_s: float = 30.0) -> SippResult:
        """Run SIPp inside the chroot with a scenario from tests/e2e/scenarios."""
        errors = f"/tmp/sipp-{os.getpid()}-{time.monotonic_ns()}.err"
        cmd = ["chroot", str(self.root), "sipp", "-sf", f"{SCENARIO_DIR_IN_CHROOT}/{scenario}",
               "-nostdin", "-timeout", f"{timeout_s:g}s", "-timeout_error",
               "-trace_err", "-error_file", errors, *args]
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout_s + 15,
                              check=False)
        err_path = self.root / errors.lstrip("/")
        err_text = err_path.read_text(errors="replace") if err_path.exists() else ""
        err_path.unlink(missing_ok=True)
        return SippResult(proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:], err_text)

    def phone(self, extension: str, scenario: str = "phone_answers.xml", *,
              calls: int | None = 1, timeout_s: float = 30.0, address: str = "127.0.0.1",
              port: int | None = None, keys: Mapping[str, str | int] | None = None
              ) -> Phone:
        """Start a manager's desk phone (SIPp UAS) on 127.0.0.1:51NN for ``extension`` 1NN
        (or on ``address:port``: ``pstn_phone`` is the client behind the trunk).

        ``calls=None``: it takes any number of calls, until ``stop()``.
        """
        port = port or 5060 + int(extension)
        errors = f"/tmp/sipp-phone-{extension}-{time.monotonic_ns()}.err"
        cmd = ["chroot", str(self.root), "sipp", "-sf", f"{SCENARIO_DIR_IN_CHROOT}/{scenario}",
               "-nostdin", "-timeout", f"{timeout_s:g}s", "-trace_err",
               "-error_file", errors, "-i", address, "-p", str(port)]
        for name, value in (keys or {}).items():
            cmd += ["-key", name, str(value)]
        if calls is not None:
            cmd += ["-m", str(calls), "-timeout_error"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(f"phone {extension} (SIPp) to listen on {address}:{port}",
                 lambda: proc.poll() is not None or udp_port_taken(address, port), 10)
        assert proc.poll() is None, (f"phone {extension} (SIPp) exited at start:\n"
                                     f"{proc.communicate()[0].decode(errors='replace')[-2000:]}")
        return Phone(extension, proc, self.root / errors.lstrip("/"), timeout_s)

    def pstn_phone(self, scenario: str, **keys: str | int) -> Phone:
        """The client's phone out in the PSTN: the trunk's far end, 127.0.0.2:5060."""
        return self.phone("pstn", scenario, address="127.0.0.2", port=5060, keys=keys)

    def call_in_background(self, did: str, caller: str, scenario: str, *,
                           timeout_s: float = 30.0, source: str = PSTN,
                           **keys: str | int) -> Phone:
        """Like call_from_pstn, but SIPp runs in the background; ``wait()`` for it."""
        errors = f"/tmp/sipp-caller-{time.monotonic_ns()}.err"
        cmd = ["chroot", str(self.root), "sipp", "-sf", f"{SCENARIO_DIR_IN_CHROOT}/{scenario}",
               "-nostdin", "-timeout", f"{timeout_s:g}s", "-timeout_error", "-trace_err",
               "-error_file", errors, "127.0.0.1:5060", "-i", source, "-m", "1",
               "-s", did, "-key", "caller", caller]
        for name, value in keys.items():
            cmd += ["-key", name, str(value)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return Phone("caller", proc, self.root / errors.lstrip("/"), timeout_s)

    def call_from_pstn(self, did: str, caller: str,
                       scenario: str = "caller_answered_remote_bye.xml", *, calls: int = 1,
                       rate: float | None = None, limit: int | None = None,
                       timeout_s: float = 30.0, source: str = PSTN,
                       **keys: str | int) -> SippResult:
        """Place ``calls`` calls from the PSTN side to ``did``: from 127.0.0.2, the trunk
        whose calls go to the Stasis app, or ``source=PSTN_AGI`` (127.0.0.4), the trunk
        whose calls go to pbxbrain by FastAGI. ``keys`` fill the scenario's ``[name]``
        fields (``talk_ms=2000``)."""
        args = ["127.0.0.1:5060", "-i", source, "-m", str(calls), "-s", did,
                "-key", "caller", caller]
        for name, value in keys.items():
            args += ["-key", name, str(value)]
        if limit is not None:
            args += ["-l", str(limit)]
        if rate is not None:
            args += ["-r", f"{rate:g}"]
        return self.sipp(scenario, *args, timeout_s=timeout_s)

    def wait_idle(self, timeout_s: float = 15.0) -> None:
        """Wait until Asterisk has no channels and no bridges left."""
        wait_for("Asterisk to have no channels and bridges",
                 lambda: (not self.channels() and not self.bridges()) or None, timeout_s)


def udp_port_taken(host: str, port: int) -> bool:
    """True when something is bound to host:port/udp (so SIPp is listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def asterisk_ready() -> bool:
    try:
        ari_get("/asterisk/ping")
    except (urllib.error.URLError, OSError):
        return False
    return True
