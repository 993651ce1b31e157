"""A CRM that is down for a while, and a pbxbrain killed with SIGKILL meanwhile: after the
restart every missed call reaches the CRM exactly once (webhook connector, real calls)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.test_routing import ROUND_ROBIN
from tests.support.asterisk import REPO, Sandbox, wait_for
from tests.support.daemon import Daemon, free_port

pytestmark = pytest.mark.asterisk


class Crm:
    """A webhook CRM on 127.0.0.1 that answers 503 (or drops the connection) while down."""

    def __init__(self) -> None:
        self.up = False
        self.attempts: Counter[str] = Counter()  # Idempotency-Key -> requests seen
        self.accepted: Counter[str] = Counter()  # Idempotency-Key -> 2xx answered
        self.kinds: dict[str, str] = {}
        self.lock = threading.Lock()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # contact lookups: nobody is known
                self.send_response(404 if crm.up else 503)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with crm.lock:
                    crm.attempts[key] += 1
                    n = crm.attempts[key]
                    up = crm.up
                    if up:
                        crm.accepted[key] += 1
                        crm.kinds[key] = json.loads(body).get("event", "?")
                if not up and n % 2 == 0:
                    self.connection.close()  # a dropped connection, not even an error
                    return
                self.send_response(200 if up else 503)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def missed(self, counter: Counter[str]) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in counter.items() if k.startswith("missed:")}


def test_given_the_crm_is_down_and_pbxbrain_is_killed_then_each_missed_call_arrives_once(
    daemon: Daemon, live_asterisk: Sandbox, tmp_path: Path
) -> None:
    daemon.stop()
    crm = Crm()
    try:
        config = tmp_path / "webhook.yaml"
        config.write_text((REPO / "tests/e2e/pbxbrain.yaml").read_text().replace(
            "crm: {kind: builtin}",
            f'crm: {{kind: webhook, url: "{crm.url}/events", secret: e2e-secret, '
            f'lookup_url: "{crm.url}/lookup"}}'))
        daemon.config = config
        daemon.start()
        daemon.wait_ready()

        phones = [live_asterisk.phone(ext, "phone_busy.xml", calls=3)
                  for ext in ("101", "102", "103")]
        for n in range(3):
            caller = live_asterisk.call_from_pstn(ROUND_ROBIN, f"+7916400000{n}",
                                                  "caller_any_outcome.xml", talk_ms=300)
            assert caller.ok, caller.output
        for phone in phones:
            assert phone.wait().ok

        # Each missed call was tried at least once against the dead CRM...
        wait_for("three missed calls tried against the dead CRM",
                 lambda: len(crm.missed(crm.attempts)) == 3 or None, timeout_s=20)
        daemon.kill()  # ...and pbxbrain dies with all three still undelivered.
        assert crm.missed(crm.accepted) == {}

        crm.up = True
        daemon.start()
        daemon.wait_ready()
        delivered = wait_for("every missed call delivered",
                             lambda: (len(crm.missed(crm.accepted)) == 3
                                      and crm.missed(crm.accepted)) or None, timeout_s=60)
        assert sorted(delivered.values()) == [1, 1, 1]  # once each, no duplicate
        assert {crm.kinds[k] for k in delivered} == {"missed_call"}
    finally:
        crm.server.shutdown()
