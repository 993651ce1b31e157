"""``make bench``: pbxbrain under SIP load, side by side with plain Asterisk dialplan.

Three columns, run in one go on one machine, with the same SIPp load (callers play
G.711 audio, the one SIPp "phone farm" answers at once and plays audio back):

1. baseline: trunk → dialplan ``MixMonitor`` + ``Dial()`` → phone (the floor);
2. minimal: trunk → ``Stasis()`` → ``bench/minimal_stasis.py`` rings, bridges, records
   (MixMonitor through AMI, as pbxbrain);
3. pbxbrain: trunk → ``Stasis()`` → pbxbrain (round-robin over many managers, presence,
   journal in SQLite, recording fetched into its store);
4. agi: the dialplan in charge: trunk ``pstn-agi`` → ``AGI()`` → the same pbxbrain
   process decides the same way and runs ``Dial()`` (recorded by MixMonitor, journaled).

For each rate: calls attempted/completed/answered/failed (a caller refused because nobody
was free counts against the zero-failure rate), post-dial delay (PDD: the caller's INVITE
to the manager's phone receiving its INVITE, matched by the caller's number, each call's
own) and answer delay (the caller's INVITE to its 200 OK; the phone answers at once, so
this adds answering and bridging) p50/p99, CPU ms per call
of pbxbrain and of Asterisk, pbxbrain's peak RSS; then each column's highest rate with
no failed call is narrowed down (``--refine``). Plus: the pure routing core alone
(decisions per second, 1,000 managers, 100,000 known contacts); the click-to-call API
(``POST /v1/calls`` accepted per second and latency, each a real call); and ``--hold``
calls at once through pbxbrain (how many Asterisk held, pbxbrain's RSS then). Results:
JSON and a Markdown table in ``bench/results/``. Only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.asterisk import (  # noqa: E402
    Sandbox,
    sandbox,
    udp_port_taken,
    wait_for,
)
from tests.support.daemon import die_with_parent  # noqa: E402

RESULTS = REPO / "bench" / "results"
PHONE_PORT = 5200
HTTP_PORT = 18190
ARI = ("http://127.0.0.1:8088", "pbxbrain", "pbxbrain-ari-secret")
AMI_SECRET = "pbxbrain-ami-secret"
GOOD_ANSWER_P99_MS = 200  # an answer delay p99 callers do not notice (summary only)
API_TOKEN = "bench-token-0123456789abcdef0123456789"  # its sha256 is in the bench config


@dataclass
class Column:
    """One rate of one column."""

    column: str
    rate: float
    attempted: int = 0
    completed: int = 0  # SIPp's successful calls: answered, or refused cleanly (480/486)
    answered: int | None = None  # of them, answered (the 200 OK came); None: not counted
    failed: int = 0
    pdd_ms_p50: float | None = None  # caller's INVITE → the phone's INVITE
    pdd_ms_p99: float | None = None
    answer_ms_p50: float | None = None  # caller's INVITE → its 200 OK
    answer_ms_p99: float | None = None
    pdd_calls: int = 0  # calls whose INVITE reached a phone (the PDD's sample)
    app_cpu_ms_per_call: float | None = None
    asterisk_cpu_ms_per_call: float | None = None
    app_peak_rss_mb: float | None = None
    retransmissions: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # SIPp's failed calls, by kind


@dataclass
class Report:
    machine: dict[str, Any]
    started: str
    call_seconds: float
    seconds_per_rate: float
    columns: list[Column] = field(default_factory=list)
    routing_core: dict[str, Any] = field(default_factory=dict)
    click_to_call_api: dict[str, Any] = field(default_factory=dict)
    hold: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# -- processes -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's highest RSS so far."""
    return _status_mb(pid, "VmHWM")


def _status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status in MB; 0 when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def asterisk_pid(root: Path) -> int:
    return int((root / "run/asterisk/pbxbrain-sandbox.pid").read_text())


def write_bench_asterisk_conf(root: Path, managers: int) -> None:
    """The bench trunk (127.0.0.3), the phone farm endpoints, the baseline dialplan."""
    phones = "\n".join(
        f"[b{i:04d}](bench-phone)\naors = b{i:04d}\n[b{i:04d}]\ntype = aor\n"
        f"contact = sip:b{i:04d}@127.0.0.1:{PHONE_PORT}\n" for i in range(1, managers + 1))
    (root / "etc/asterisk/pjsip_bench.conf").write_text(f"""
[pstn-bench]
type = endpoint
transport = transport-udp
context = bench
disallow = all
allow = alaw,ulaw
direct_media = no
rtp_symmetric = yes
send_connected_line = no
aors = pstn-bench
[pstn-bench]
type = aor
contact = sip:127.0.0.3:5060
[pstn-bench]
type = identify
endpoint = pstn-bench
match = 127.0.0.3

[bench-phone](!)
type = endpoint
transport = transport-udp
context = from-phones
disallow = all
allow = alaw,ulaw
direct_media = no
rtp_symmetric = yes
send_connected_line = no

{phones}
""")
    (root / "etc/asterisk/extensions_bench.conf").write_text("""
[bench]
; (1) baseline: plain dialplan, recorded like pbxbrain records
exten => _1X.,1,MixMonitor(bench-${UNIQUEID}.wav)
 same => n,Dial(PJSIP/b0001,20)
 same => n,Hangup()
; (2) minimal Stasis app
exten => _2X.,1,Stasis(pbxbench,min,PJSIP/b0001)
 same => n,Hangup()
""")


def remove_bench_asterisk_conf(root: Path) -> None:
    for name in ("pjsip_bench.conf", "extensions_bench.conf"):
        (root / "etc/asterisk" / name).unlink(missing_ok=True)
    for wav in (root / "var/spool/asterisk/monitor").glob("bench-*.wav"):
        wav.unlink()
    for wav in (root / "var/spool/asterisk/recording").glob("*.wav"):
        wav.unlink()


def write_pbxbrain_conf(path: Path, managers: int, spool: Path) -> None:
    """pbxbrain as it runs beside Asterisk: ``spool`` is Asterisk's recording spool as this
    host sees it (recordings are moved from there, not fetched through ARI)."""
    staff = "\n".join(f"  m{i:04d}: {{name: Manager {i}, phone: PJSIP/b{i:04d}}}"
                      for i in range(1, managers + 1))
    members = ", ".join(f"m{i:04d}" for i in range(1, managers + 1))
    path.write_text(f"""
node: bench
asterisk:
  ari: {{url: "{ARI[0]}", user: {ARI[1]}, password: "{ARI[2]}", app: pbxbrain}}
  ami: {{host: 127.0.0.1, port: 5038, user: pbxbrain, secret: {AMI_SECRET}}}
  trunk: pstn
  fallback_context: pbxbrain-fallback
database: "${{PBXBRAIN_DATABASE}}"
http:
  listen: "127.0.0.1:{HTTP_PORT}"
  tokens: [{{name: bench, sha256: "{hashlib.sha256(API_TOKEN.encode()).hexdigest()}",
             scopes: [originate, read]}}]
  rate_limits: {{originate_per_token: 10000, originate_per_manager: 1000}}
click_to_call: {{client_ring_seconds: 10}}
numbers: {{default_region: RU, dial_allowed: ["+7"]}}
staff:
{staff}
departments:
  sales: {{members: [{members}], strategy: round_robin, ring_seconds: 10}}
schedules:
  always: {{timezone: UTC, weekly: {{mon-sun: "00:00-24:00"}}}}
lines:
  "+74951110000": {{name: Bench, schedule: always, route: [{{department: sales}}]}}
crm: {{kind: builtin}}
recordings: {{dir: "${{PBXBRAIN_RECORDINGS_DIR}}", keep_days: 1, format: wav,
             local_dir: "{spool}"}}
""")


# -- SIPp scenarios of the bench -----------------------------------------------------

SCENARIOS_IN_CHROOT = "/opt/pbxbrain-tests"
PHONE_LOG_DIR = "/tmp/pbxbrain-bench-phones"  # in the chroot: the phone farm's log
_NOW = '<nop><action><gettimeofday assign_to="t_s,t_us"/><log message="[$t_s] [$t_us] {}"/>' \
    '</action></nop>'


def write_bench_scenarios(root: Path) -> None:
    """The e2e caller and phone, each logging the wall clock of its INVITE with the caller's
    number: the caller just before sending it (one number per call, from ``-inf``), the
    phone just after receiving it. Same host, same clock: the difference is the PDD."""
    source = REPO / "tests" / "e2e" / "scenarios"
    target = root / SCENARIOS_IN_CHROOT.lstrip("/")
    caller = (source / "caller_any_outcome.xml").read_text()
    assert "[caller]" in caller, "the e2e caller scenario changed"
    caller = caller.replace("[caller]", "[field0]")
    first_send = caller.index("<send")
    caller = caller[:first_send] + _NOW.format("[field0]") + "\n  " + caller[first_send:]
    (target / "bench_caller.xml").write_text(caller)
    phone = (source / "phone_answers.xml").read_text()
    invite = '<recv request="INVITE" crlf="true"/>'
    assert phone.count(invite) == 1
    phone = phone.replace(invite, invite + "\n  " + _NOW.format("[last_From:]"))
    (target / "bench_phone.xml").write_text(phone)


_numbers = itertools.count(1)


def callers_file(path: Path, calls: int) -> list[str]:
    """An injection file of ``calls`` callers, each number new in this run of the bench."""
    numbers = [f"+7916{next(_numbers):07d}" for _ in range(calls)]
    path.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    return numbers


_LOGGED = re.compile(r"^(\d+)(?:\.\d*)? (\d+)(?:\.\d*)? .*?(\+\d+)")


def invite_times(logs: list[Path]) -> dict[str, float]:
    """Caller number → wall-clock time (s) of its first INVITE in SIPp's ``-trace_logs``."""
    times: dict[str, float] = {}
    for log_file in logs:
        for line in log_file.read_text(errors="replace").splitlines():
            m = _LOGGED.match(line)
            if m and m[3] not in times:
                times[m[3]] = int(m[1]) + int(m[2]) / 1e6
    return times


def post_dial_delays(sent: dict[str, float], rang: dict[str, float]) -> list[float]:
    """Per call, ms from the caller's INVITE to a phone's (calls that rang no phone have
    none)."""
    return [(rang[n] - t) * 1000 for n, t in sent.items() if n in rang]


# -- one load step ------------------------------------------------------------------


def run_load(box: Sandbox, column: str, rate: float, seconds: float, call_s: float,
             app_pid: int | None) -> Column:
    source, did = {"baseline": ("127.0.0.3", "1000"), "minimal": ("127.0.0.3", "2000"),
                   "pbxbrain": ("127.0.0.2", "74951110000"),
                   "agi": ("127.0.0.4", "74951110000")}[column]
    calls = max(1, int(rate * seconds))
    ast_pid = asterisk_pid(box.root)
    ast_cpu0 = cpu_seconds(ast_pid)
    app_cpu0 = cpu_seconds(app_pid) if app_pid else 0.0
    workdir = Path(tempfile.mkdtemp(dir=box.root / "tmp"))
    inside = "/" + str(workdir.relative_to(box.root))
    callers_file(workdir / "callers.csv", calls)
    sipp = ["sipp", "-sf", f"{SCENARIOS_IN_CHROOT}/bench_caller.xml",
            "127.0.0.1:5060", "-i", source, "-s", did, "-inf", "callers.csv",
            "-key", "talk_ms", str(int(call_s * 1000)), "-r", f"{rate:g}", "-m", str(calls),
            "-l", str(int(rate * (call_s + 10))), "-nostdin", "-timeout",
            f"{seconds + call_s + 60:g}s", "-trace_rtt", "-rtt_freq", "1",
            "-trace_stat", "-fd", "1", "-stf", "stat.csv", "-trace_logs",
            "-trace_err", "-error_file", "errors.log"]
    # SIPp writes its response-time trace into its working directory.
    proc = subprocess.run(
        ["chroot", str(box.root), "sh", "-c", 'cd "$0" && exec "$@"', inside, *sipp],
        capture_output=True, text=True, timeout=seconds + call_s + 120, check=False)
    result = Column(column, rate, attempted=calls)
    stats = _last_stat_row(workdir / "stat.csv")
    if stats:
        result.completed = int(stats.get("SuccessfulCall(C)", 0))
        result.failed = int(stats.get("FailedCall(C)", 0))
        result.retransmissions = int(stats.get("Retransmissions(C)", 0))
    else:
        result.failed = calls
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    result.errors = _error_kinds(workdir / "errors.log") if result.failed else {}
    rtts = [v for f in workdir.glob("*_rtt.csv") for v in _rtts(f)]
    result.answered = len(rtts)  # one sample per 200 OK (-rtt_freq 1)
    if rtts:
        result.answer_ms_p50 = statistics.median(rtts)
        result.answer_ms_p99 = _percentile(rtts, 99)
    sent = invite_times(list(workdir.glob("*_logs.log")))  # this run's callers only
    pdds = post_dial_delays(sent, invite_times(
        list((box.root / PHONE_LOG_DIR.lstrip("/")).glob("*_logs.log"))))
    result.pdd_calls = len(pdds)
    if pdds:
        result.pdd_ms_p50 = statistics.median(pdds)
        result.pdd_ms_p99 = _percentile(pdds, 99)
    result.asterisk_cpu_ms_per_call = (cpu_seconds(ast_pid) - ast_cpu0) * 1000 / calls
    if app_pid:
        result.app_cpu_ms_per_call = (cpu_seconds(app_pid) - app_cpu0) * 1000 / calls
        result.app_peak_rss_mb = peak_rss_mb(app_pid)
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    settle(box, call_s + 60)
    return result


def settle(box: Sandbox, timeout_s: float) -> None:
    """Wait until Asterisk has no channels left; an overloaded ARI may drop requests."""
    def idle() -> bool:
        try:
            return not box.channels() and not box.bridges()
        except OSError:
            return False

    try:
        wait_for("Asterisk to settle", idle, timeout_s, interval_s=0.5)
    except AssertionError as exc:
        print(f"  (not settled: {exc})", file=sys.stderr)


def _last_stat_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head = lines[0].split(";")
    return dict(zip(head, lines[-1].split(";"), strict=False))


def _rtts(path: Path) -> list[float]:
    if not path.exists():
        return []
    values = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split(";")
        if len(parts) >= 2:
            try:
                values.append(float(parts[1]))
            except ValueError:
                continue
    return values


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- click-to-call API and holding many calls ------------------------------------------


def bench_click_to_call(box: Sandbox, managers: int, requests: int,
                        concurrency: int) -> dict[str, Any]:
    """``requests`` POST /v1/calls, ``concurrency`` at a time, each for another manager;
    every accepted one is a real call: the farm's phone answers, then the client (a SIPp
    UAS on the trunk, 127.0.0.2) answers and hangs up after a second."""
    client = subprocess.Popen(
        ["chroot", str(box.root), "sipp", "-sf",
         "/opt/pbxbrain-tests/phone_answers_then_hangs_up.xml", "-i", "127.0.0.2", "-p",
         "5060", "-key", "talk_ms", "1000", "-nostdin", "-bg"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client.wait()
    try:
        result = asyncio.run(_originate_load(min(requests, managers), concurrency))
    finally:
        settle(box, 90)
        subprocess.run(["pkill", "-f", "sipp.*-i 127.0.0.2 -p 5060"], check=False)
    return result


async def _originate_load(requests: int, concurrency: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{HTTP_PORT}/v1/calls"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    slots = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        body = {"manager": f"m{n + 1:04d}", "number": f"+7916{n:07d}"}
        async with slots:
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session, n) for n in range(requests)))
        elapsed = time.perf_counter() - started
    accepted = statuses.get(202, 0)
    return {"requests": requests, "concurrency": concurrency, "accepted": accepted,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "accepted_per_second": round(accepted / elapsed, 1),
            "latency_ms_p50": round(statistics.median(latencies), 1),
            "latency_ms_p99": round(_percentile(latencies, 99), 1)}


def bench_hold(box: Sandbox, target: int, rate: float, app_pid: int) -> dict[str, Any]:
    """Ramp up to ``target`` calls at once through pbxbrain (each talks long enough for
    all of them to overlap) and see how many are held, and pbxbrain's memory then."""
    talk_s = target / rate + 10
    workdir = Path(tempfile.mkdtemp(dir=box.root / "tmp"))
    inside = "/" + str(workdir.relative_to(box.root))
    sipp = ["sipp", "-sf", "/opt/pbxbrain-tests/caller_any_outcome.xml", "127.0.0.1:5060",
            "-i", "127.0.0.2", "-s", "74951110000", "-key", "caller", "+79160000000",
            "-key", "talk_ms", str(int(talk_s * 1000)), "-r", f"{rate:g}",
            "-m", str(target), "-l", str(target), "-nostdin", "-timeout",
            f"{talk_s * 2 + 60:g}s", "-trace_stat", "-fd", "1", "-stf", "stat.csv",
            "-trace_err", "-error_file", "errors.log", "-trace_rtt", "-rtt_freq", "1"]
    proc = subprocess.Popen(
        ["chroot", str(box.root), "sh", "-c", 'cd "$0" && exec "$@"', inside, *sipp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = 0
    rss = 0.0
    while proc.poll() is None:
        held = max(held, _calls_up(box))
        rss = max(rss, _status_mb(app_pid, "VmRSS"))
        time.sleep(1)
    stats = _last_stat_row(workdir / "stat.csv")
    answered = sum(len(_rtts(f)) for f in workdir.glob("*_rtt.csv"))
    errors = _error_kinds(workdir / "errors.log")
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    settle(box, 120)
    return {"target": target, "rate": rate, "talk_s": round(talk_s, 1),
            "completed": int(stats.get("SuccessfulCall(C)", 0)),
            "answered": answered, "failed": int(stats.get("FailedCall(C)", 0)),
            "errors": errors,
            "held_max": held, "pbxbrain_rss_mb_max": round(rss, 1)}


def _error_kinds(path: Path) -> dict[str, int]:
    """SIPp's error lines, counted by what went wrong (call ids and times removed)."""
    kinds: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            # Error lines start with a date and a tab; the rest are SIP messages quoted.
            if not re.match(r"\d{4}-\d\d-\d\d\t", line):
                continue
            text = line.split(": ", 1)[-1]
            if "jumping to label" in text:
                continue  # the caller's talk time ending: the scenario's own timeout
            kind = re.sub(r"[0-9a-f]{8,}[-0-9a-f@.]*|\d+", "N", text)[:120].strip()
            kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])


def _calls_up(box: Sandbox) -> int:
    """Calls in progress in Asterisk (``core show channels count``)."""
    try:
        text = box.rx("core show channels count")
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in text.splitlines():
        if line.strip().endswith("active calls"):
            return int(line.split()[0])
    return 0


# -- the pure core -------------------------------------------------------------------


def bench_routing_core(decisions: int = 20_000) -> dict[str, Any]:
    from pbxbrain.config import parse_config
    from pbxbrain.domain.model import InboundCall
    from pbxbrain.domain.plan import Facts
    from pbxbrain.domain.routing import decide

    rng = random.Random(7)
    managers = 1000
    depts = 50
    staff = "\n".join(f"  m{i:04d}: {{name: M {i}, phone: PJSIP/m{i:04d}}}"
                      for i in range(managers))
    departments = "\n".join(
        f"  d{d:02d}: {{members: [{', '.join(f'm{i:04d}' for i in range(d * 20, d * 20 + 20))}]"
        f", strategy: {'round_robin' if d % 2 else 'ring_all'}, ring_seconds: 15}}"
        for d in range(depts))
    config = parse_config(f"""
asterisk: {{ari: {{user: u, password: p}}, ami: {{user: u, secret: s}}, trunk: pstn}}
numbers: {{default_region: RU}}
staff:
{staff}
departments:
{departments}
schedules:
  office: {{timezone: Europe/Moscow, weekly: {{mon-fri: "09:00-18:00"}}}}
lines:
  "+74951234567":
    schedule: office
    route: [{{owner: {{then: [department, head]}}}}, {{department: d01}}]
blacklist: ["+7900"]
""", "bench")
    contacts = {f"+7916{n:07d}": f"m{rng.randrange(managers):04d}" for n in range(100_000)}
    numbers = list(contacts)
    now = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    calls = []
    for n in range(decisions):
        caller = numbers[rng.randrange(len(numbers))] if n % 4 else f"+7917{n:07d}"
        busy = frozenset(f"m{rng.randrange(managers):04d}" for _ in range(30))
        facts = Facts(owner=contacts.get(caller), busy=busy,
                      cursors={"d01": n % 20})
        calls.append((InboundCall(str(n), str(n), caller, caller, "74951234567", now), facts))
    started = time.perf_counter()
    for call, facts in calls:
        decide(call, facts, config, now)
    elapsed = time.perf_counter() - started
    return {"decisions": decisions, "seconds": round(elapsed, 3),
            "decisions_per_second": round(decisions / elapsed), "managers": managers,
            "contacts": len(contacts)}


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5,10,20,40", help="calls per second, comma list")
    parser.add_argument("--seconds", type=float, default=10, help="load time per rate")
    parser.add_argument("--call-seconds", type=float, default=3, help="talk time per call")
    parser.add_argument("--managers", type=int, default=300)
    parser.add_argument("--columns", default="baseline,minimal,pbxbrain,agi")
    parser.add_argument("--refine", type=int, default=3,
                        help="after the ladder, steps that narrow each column's highest "
                        "zero-failure rate: doubling past the ladder while nothing fails "
                        "(up to --max-rate), then halving the gap to the first failing rate")
    parser.add_argument("--max-rate", type=float, default=160)
    parser.add_argument("--api-requests", type=int, default=200,
                        help="click-to-call requests (0: skip), each a real call")
    parser.add_argument("--api-concurrency", type=int, default=20)
    parser.add_argument("--hold", type=int, default=500,
                        help="calls to hold at once through pbxbrain (0: skip)")
    parser.add_argument("--hold-rate", type=float, default=25)
    parser.add_argument("--profile", metavar="FILE", help="run pbxbrain under cProfile, "
                        "write its stats to FILE (CPU figures then include the profiler)")
    parser.add_argument("--summarize", metavar="JSON",
                        help="only rebuild the summary and tables of a saved run")
    args = parser.parse_args()
    if args.summarize:
        raw = json.loads(Path(args.summarize).read_text())
        columns = [Column(**_upgraded(c)) for c in raw.pop("columns")]
        saved = Report(**raw, columns=columns)
        saved.summary = summarize(saved)
        write_results(saved)
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    columns = args.columns.split(",")

    report = Report(
        machine={"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version()},
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        call_seconds=args.call_seconds, seconds_per_rate=args.seconds)
    print("routing core ...", flush=True)
    report.routing_core = bench_routing_core()
    print(f"  {report.routing_core['decisions_per_second']} decisions/s", flush=True)

    sandbox("start")
    box = Sandbox(Path(sandbox("root").stdout.strip()))
    box.install_scenarios()
    write_bench_scenarios(box.root)
    write_bench_asterisk_conf(box.root, args.managers)
    sandbox("restart")
    report.machine["asterisk"] = box.rx("core show version").strip()
    tmp = Path(tempfile.mkdtemp(prefix="pbxbrain-bench-"))
    config = tmp / "pbxbrain.yaml"
    write_pbxbrain_conf(config, args.managers, box.root / "var/spool/asterisk/recording")
    env = {**os.environ, "PBXBRAIN_DATABASE": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
           "PBXBRAIN_RECORDINGS_DIR": str(tmp / "recordings"), "PBXBRAIN_LOG_LEVEL": "WARNING"}
    phone_logs = box.root / PHONE_LOG_DIR.lstrip("/")
    subprocess.run(["rm", "-rf", str(phone_logs)], check=True)
    phone_logs.mkdir(parents=True)
    phones = subprocess.Popen(
        ["chroot", str(box.root), "sh", "-c", 'cd "$0" && exec "$@"', PHONE_LOG_DIR,
         "sipp", "-sf", f"{SCENARIOS_IN_CHROOT}/bench_phone.xml", "-i", "127.0.0.1", "-p",
         str(PHONE_PORT), "-nostdin", "-bg", "-trace_logs"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phones.wait()
    wait_for("the phone farm", lambda: udp_port_taken("127.0.0.1", PHONE_PORT), 10)
    command = [sys.executable, "-m", "pbxbrain", "run", "--config", str(config),
               "--log-level", "WARNING"]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", args.profile, *command[1:]]

    def start_app() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, cwd=REPO,
                                preexec_fn=die_with_parent)  # noqa: PLW1509

    app = start_app()
    minimal = subprocess.Popen([sys.executable, str(REPO / "bench" / "minimal_stasis.py"),
                                *ARI, AMI_SECRET], cwd=REPO, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        wait_for("pbxbrain health", _healthy, 30)
        pids = {"pbxbrain": app.pid, "agi": app.pid, "minimal": minimal.pid}

        def step(column: str, rate: float) -> Column:
            print(f"{column:9s} {rate:5g} cps ...", end=" ", flush=True)
            try:
                col = run_load(box, column, rate, args.seconds, args.call_seconds,
                               pids.get(column))
            except (OSError, subprocess.SubprocessError) as exc:
                col = Column(column, rate, attempted=int(rate * args.seconds),
                             failed=int(rate * args.seconds))
                print(f"step failed: {exc!r}", file=sys.stderr)
                settle(box, 60)
            report.columns.append(col)
            print(f"ok {col.completed}/{col.attempted}, answered {col.answered}, "
                  f"failed {col.failed}, "
                  f"{col.pdd_calls} rang, "
                  f"PDD p50/p99 {_f(col.pdd_ms_p50)}/{_f(col.pdd_ms_p99)} ms, answer "
                  f"{_f(col.answer_ms_p50)}/{_f(col.answer_ms_p99)} ms, app CPU "
                  f"{_f(col.app_cpu_ms_per_call)}, Asterisk CPU "
                  f"{_f(col.asterisk_cpu_ms_per_call)} ms/call"
                  + (f"; failures: {col.errors}" if col.errors else ""), flush=True)
            return col

        for rate in rates:
            for column in columns:
                step(column, rate)
        for column in columns:
            refine_limit(column, report, step, args.refine, args.max_rate)
        # A phase that breaks is reported as such; it does not throw the run away.
        if args.api_requests > 0:
            print("click-to-call API ...", end=" ", flush=True)
            try:
                report.click_to_call_api = bench_click_to_call(
                    box, args.managers, args.api_requests, args.api_concurrency)
            except (OSError, aiohttp.ClientError, TimeoutError,
                    subprocess.SubprocessError) as exc:
                report.click_to_call_api = {"error": repr(exc)}
            print(report.click_to_call_api, flush=True)
        if args.hold > 0:
            print(f"holding {args.hold} calls ...", end=" ", flush=True)
            if not args.profile:
                # A fresh process: Python keeps the memory of the overloaded rates above
                # (RSS never shrinks), which would be measured instead of the hold's.
                stop_process(app)
                app = start_app()
                wait_for("pbxbrain health", _healthy, 30)
            try:
                report.hold = bench_hold(box, args.hold, args.hold_rate, app.pid)
            except (OSError, subprocess.SubprocessError) as exc:
                report.hold = {"error": repr(exc)}
            print(report.hold, flush=True)
    finally:
        for proc in (app, minimal):
            stop_process(proc)
        subprocess.run(["pkill", "-f", f"sipp.*-p {PHONE_PORT}"], check=False)
        remove_bench_asterisk_conf(box.root)
        sandbox("stop")
    report.summary = summarize(report)
    write_results(report)
    return 0


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _upgraded(column: dict[str, Any]) -> dict[str, Any]:
    """A saved column of a run before 2026-11-25, whose "PDD" was the answer delay."""
    if "answer_ms_p50" not in column:
        column = {**column, "answer_ms_p50": column.get("pdd_ms_p50"),
                  "answer_ms_p99": column.get("pdd_ms_p99"), "pdd_ms_p50": None,
                  "pdd_ms_p99": None}
    return column


def refine_limit(column: str, report: Report, step: Callable[[str, float], Column],
                 steps: int, max_rate: float) -> None:
    """Narrow ``column``'s highest zero-failure rate with ``steps`` more runs.

    A ladder of 5, 10, 20, 40, 80 only says "between 40 and 80"; a ratio of two such
    figures is mostly rounding. While nothing has failed yet the rate doubles (up to
    ``max_rate``); then each step halves the gap between the best passing rate and the
    lowest failing one.
    """
    for _ in range(steps):
        runs = [c for c in report.columns if c.column == column]
        best, worst = _limits(runs)
        rate = min(best * 2, max_rate) if worst is None else float(round((best + worst) / 2))
        if rate <= best or rate == worst or rate in {c.rate for c in runs}:
            return
        step(column, rate)


def _limits(runs: list[Column]) -> tuple[float, float | None]:
    """(highest rate with no failure at it or below, lowest rate that failed)."""
    best, worst = 0.0, None
    for col in sorted(runs, key=lambda c: c.rate):
        if not _clean(col):
            worst = col.rate
            break
        best = col.rate
    return best, worst


def _clean(col: Column) -> bool:
    """Every call answered: a caller refused because nobody was free is a lost call."""
    return col.failed == 0 and col.completed == col.attempted and (
        col.answered is None or col.answered == col.attempted)


def _healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/v1/health", timeout=2):
            return True
    except OSError:
        return False


def summarize(report: Report) -> dict[str, Any]:
    def best(column: str) -> float:
        # A lucky pass above a failing rate does not count.
        return _limits([c for c in report.columns if c.column == column])[0]

    def good(column: str) -> float:
        # Zero failures is not enough: an overloaded Asterisk completes every call with
        # seconds of delay. Also ask for an answer delay p99 no caller would notice.
        ok = 0.0
        for col in sorted((c for c in report.columns if c.column == column),
                          key=lambda c: c.rate):
            if not _clean(col) or col.answer_ms_p99 is None or (
                    col.answer_ms_p99 > GOOD_ANSWER_P99_MS):
                break
            ok = col.rate
        return ok

    present = [c for c in ("baseline", "minimal", "pbxbrain", "agi")
               if any(col.column == c for col in report.columns)]
    out: dict[str, Any] = {f"max_zero_failure_cps_{c}": best(c) for c in present}
    if out.get("max_zero_failure_cps_baseline"):
        for c in ("pbxbrain", "agi"):
            if c in present:
                out[f"zero_failure_ratio_{c}_vs_baseline"] = round(
                    out[f"max_zero_failure_cps_{c}"] / out["max_zero_failure_cps_baseline"], 2)
    for c in present:
        out[f"max_cps_answer_p99_under_{GOOD_ANSWER_P99_MS}ms_{c}"] = good(c)
    good_base = out.get(f"max_cps_answer_p99_under_{GOOD_ANSWER_P99_MS}ms_baseline")
    for c in ("pbxbrain", "agi"):
        if good_base and c in present:
            out[f"answer_under_{GOOD_ANSWER_P99_MS}ms_ratio_{c}_vs_baseline"] = round(
                out[f"max_cps_answer_p99_under_{GOOD_ANSWER_P99_MS}ms_{c}"] / good_base, 2)
    at20 = {c.column: c for c in report.columns if c.rate == 20}
    for column, prefix in (("pbxbrain", ""), ("agi", "agi_")):
        for figure, name in (("pdd_ms_p99", "pdd"), ("answer_ms_p99", "answer_delay")):
            ours, theirs = (getattr(at20[c], figure) if c in at20 else None
                            for c in (column, "baseline"))
            if ours is not None and theirs is not None:
                out[f"{prefix}added_{name}_p99_ms_at_20cps"] = round(ours - theirs, 1)
    for column in ("pbxbrain", "agi"):
        cpu = [c.app_cpu_ms_per_call for c in report.columns
               if c.column == column and c.app_cpu_ms_per_call is not None]
        if cpu:
            out[f"{column}_cpu_s_per_1000_calls"] = round(max(cpu), 2)
    rss = [c.app_peak_rss_mb for c in report.columns
           if c.column in ("pbxbrain", "agi") and c.app_peak_rss_mb is not None]
    if rss:
        out["pbxbrain_peak_rss_mb"] = round(max(rss), 1)
    out["routing_core_decisions_per_second"] = report.routing_core.get("decisions_per_second")
    api = report.click_to_call_api
    if "accepted_per_second" in api:
        out["click_to_call_accepted_per_second"] = api["accepted_per_second"]
        out["click_to_call_latency_ms_p99"] = api["latency_ms_p99"]
    if "held_max" in report.hold:
        out["calls_held_at_once"] = report.hold["held_max"]
        out["pbxbrain_rss_mb_holding_them"] = report.hold["pbxbrain_rss_mb_max"]
    return out


def write_results(report: Report) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = report.started.replace(":", "").replace("-", "")
    data = asdict(report)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"Run {report.started} on {report.machine['cpus']} CPUs, {report.machine['platform']},"
        f" {report.machine.get('asterisk', '')}; calls of {report.call_seconds:g} s, "
        f"{report.seconds_per_rate:g} s per rate.",
        "",
        "PDD: the caller's INVITE to the manager's phone's INVITE; answer: the caller's "
        "INVITE to its 200 OK (the phone answers at once).",
        "",
        "| column | cps | attempted | completed | answered | failed | PDD p50 ms | PDD p99 ms "
        "| answer p50 ms | answer p99 ms "
        "| app CPU ms/call | Asterisk CPU ms/call | app peak RSS MB | retrans |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.columns:
        lines.append(
            f"| {c.column} | {c.rate:g} | {c.attempted} | {c.completed} | "
            f"{'-' if c.answered is None else c.answered} | {c.failed} | "
            f"{_f(c.pdd_ms_p50)} | {_f(c.pdd_ms_p99)} | {_f(c.answer_ms_p50)} | "
            f"{_f(c.answer_ms_p99)} | {_f(c.app_cpu_ms_per_call)} | "
            f"{_f(c.asterisk_cpu_ms_per_call)} | {_f(c.app_peak_rss_mb)} | "
            f"{c.retransmissions} |")
    lines += ["", "| summary | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.summary.items()]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
