"""Regional, sequential, fixed and sticky routing and the busy prompt, on the real Asterisk.

Config tests/e2e/strategies.yaml: department moscow (sequential: ivanov 101, petrov 102,
2 s each), spb (fixed: sidorov 103, kuznetsov 104), accounts (sticky: smirnov 106,
volkova 107, 2 s each); callers from +7812 and from Kazakhstan are in region spb.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxbrain.domain.model import CallOutcome, EventKind
from tests.e2e.conftest import JournalReader, assert_recorded, running_daemon
from tests.e2e.test_routing import events, finish
from tests.support.asterisk import Sandbox, wait_for
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk

REGIONAL = "74951000011"
STICKY = "74951000012"
BUSY_PROMPT = "74951000013"
IVANOV_DIRECT = "74951000014"


@pytest.fixture
def strategies(tmp_path: Path, live_asterisk: Sandbox) -> Iterator[Daemon]:
    with running_daemon(tmp_path, "strategies.yaml") as d:
        yield d


@pytest.fixture
def journal(strategies: Daemon) -> JournalReader:
    return JournalReader(strategies.database_url)


def rang(journal: JournalReader, call_id: str) -> list[str]:
    return [str(e["staff"]) for e in events(journal, call_id, EventKind.RINGING)]


def notes(journal: JournalReader, call_id: str) -> list[str]:
    """Why the router decided as it did (the ``routed`` entry's notes)."""
    (routed,) = events(journal, call_id, EventKind.ROUTED)
    found = routed["notes"]
    assert isinstance(found, list)
    return [str(note) for note in found]


@pytest.mark.parametrize(("number", "matched"), [("+78121234567", "+7812"),  # prefix
                                                  ("+77012345678", "KZ")])  # country
def test_given_a_caller_from_the_spb_region_then_the_fixed_department_rings_one_alone(
    strategies: Daemon, live_asterisk: Sandbox, journal: JournalReader, number: str,
    matched: str,
) -> None:
    sidorov = live_asterisk.phone("103")
    caller = live_asterisk.call_from_pstn(REGIONAL, number, "caller_waits.xml", talk_ms=1500)
    finish(sidorov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call(number)
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "sidorov"
    assert rang(journal, call.call_id) == ["sidorov"]  # kuznetsov was free, and not rung
    assert f"caller {number} in region spb ({matched}) → department spb" in notes(
        journal, call.call_id)
    # talked for 1.5 s
    assert_recorded(strategies, journal, call.call_id, 0.5, 3.0, taken="fetched")


def test_given_a_caller_in_no_region_then_the_default_department_rings_in_listed_order(
    strategies: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml")
    petrov = live_asterisk.phone("102")
    caller = live_asterisk.call_from_pstn(REGIONAL, "+79162000001", "caller_waits.xml",
                                          talk_ms=1500)
    finish(ivanov, petrov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79162000001")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "petrov"
    assert rang(journal, call.call_id) == ["ivanov", "petrov"]
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"ivanov": "no answer in time"}
    assert_recorded(strategies, journal, call.call_id, 0.5, 3.0, taken="fetched")
    assert "caller +79162000001 in no region → default moscow" in notes(journal,
                                                                          call.call_id)


def test_given_sticky_then_the_manager_who_talked_to_a_new_caller_keeps_him(
    strategies: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    client, other = "+79163000001", "+79163000002"
    volkova = live_asterisk.phone("107", calls=3)

    # 1. A new client: the round-robin pick smirnov does not answer, volkova does; she
    #    talked to him, so he is hers from now on.
    smirnov = live_asterisk.phone("106", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(STICKY, client, "caller_waits.xml", talk_ms=300)
    finish(smirnov)
    assert caller.ok, caller.output
    first = journal.wait_closed_call(client)
    assert (first.outcome, first.answered_by) == (CallOutcome.ANSWERED, "volkova")
    assert rang(journal, first.call_id) == ["smirnov", "volkova"]
    wait_for("the client's sticky manager", lambda: journal.manager_of(client), 10)
    assert journal.manager_of(client) == "volkova"
    live_asterisk.wait_idle()

    # 2. Another new client moves the round-robin cursor on (volkova first this time).
    caller = live_asterisk.call_from_pstn(STICKY, other, "caller_waits.xml", talk_ms=300)
    assert caller.ok, caller.output
    assert journal.wait_closed_call(other).answered_by == "volkova"
    live_asterisk.wait_idle()

    # 3. The first client again: round robin would start with smirnov; he gets volkova.
    caller = live_asterisk.call_from_pstn(STICKY, client, "caller_waits.xml", talk_ms=1500)
    finish(volkova)
    assert caller.ok, caller.output

    def second_call() -> str | None:
        calls = [c for c in journal.calls(client) if c.outcome is not None]
        return calls[0].call_id if len(calls) == 2 else None

    again = wait_for("the client's second call closed", second_call, 15)
    assert rang(journal, again) == ["volkova"]
    assert "volkova is this caller's manager in accounts" in notes(journal, again)
    assert journal.manager_of(client) == "volkova"
    assert_recorded(strategies, journal, again, 0.5, 3.0, taken="fetched")


def test_given_busy_prompt_and_the_manager_on_a_call_then_the_caller_hears_it_and_goes_on(
    strategies: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # ivanov is talking to someone else ...
    ivanov = live_asterisk.phone("101")
    talking = live_asterisk.call_in_background(IVANOV_DIRECT, "+79164000001",
                                               "caller_waits.xml", talk_ms=12000)
    wait_for("ivanov to be talking",
             lambda: any(c.answered_at for c in journal.calls("+79164000001")), 10)

    # ... when a client calls the line that rings ivanov, then petrov.
    petrov = live_asterisk.phone("102")
    # The prompt answers the caller: his talk time runs from then (the prompt is 2.4 s,
    # then petrov rings), so it is long enough for a loaded machine.
    caller = live_asterisk.call_from_pstn(BUSY_PROMPT, "+79164000002", "caller_waits.xml",
                                          talk_ms=7000)
    finish(petrov)
    assert caller.ok, caller.output
    call = journal.wait_closed_call("+79164000002")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "petrov"
    assert rang(journal, call.call_id) == ["petrov"]
    (routed,) = events(journal, call.call_id, EventKind.ROUTED)
    assert routed["skipped"] == {"ivanov": "busy"}
    assert [e["prompt"] for e in events(journal, call.call_id, EventKind.PLAYED)] == [
        "pls-hold-while-try"]
    # Recorded from the bridge: the caller's 7 s less the 2.4 s prompt and the ringing.
    assert_recorded(strategies, journal, call.call_id, 1.5, 5.0, taken="fetched")

    first = talking.wait()
    assert first.ok, first.output
    finish(ivanov)
