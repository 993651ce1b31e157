"""Missed calls end up as a CRM contact and a task for a concrete manager (built-in CRM),
and a later conversation with the number closes the task ("called back")."""

from __future__ import annotations

import pytest

from pbxbrain.domain.model import CallOutcome, Task, TaskStatus
from tests.e2e.conftest import JournalReader
from tests.e2e.test_routing import AFTER_HOURS, ROUND_ROBIN, finish
from tests.support.asterisk import Phone, Sandbox, wait_for
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk

OWNER_FIRST = "74951000005"


def busy_phones(box: Sandbox, calls: int = 1) -> list[Phone]:
    return [box.phone(ext, "phone_busy.xml", calls=calls) for ext in ("101", "102", "103")]


def test_given_nobody_answers_a_new_number_then_contact_and_task_for_the_first_pick(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    phones = [live_asterisk.phone(ext, "phone_busy.xml", calls=2)
              for ext in ("101", "102", "103")]
    first = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000001", "caller_any_outcome.xml",
                                         talk_ms=300)
    assert first.ok, first.output
    call = journal.wait_closed_call("+79162000001")
    assert call.outcome is CallOutcome.MISSED

    task = journal.wait_task("+79162000001")
    assert task.responsible == "ivanov"  # the round-robin pick of a fresh cursor
    assert task.status is TaskStatus.OPEN
    assert task.last_call_id == call.call_id
    contact = journal.contact("+79162000001")
    assert contact is not None
    assert contact.owner == "ivanov"  # assigned: he keeps this client from now on

    # The same number misses again while the task is open: the task is updated, not doubled.
    second = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000001", "caller_any_outcome.xml",
                                          talk_ms=300)
    finish(*phones)
    assert second.ok, second.output
    task = journal.wait_task("+79162000001", misses=2)
    assert len(journal.tasks("+79162000001")) == 1
    assert task.responsible == "ivanov"


def test_given_a_known_client_then_his_owner_rings_first_and_gets_the_task_when_missed(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    journal.import_contacts([{"phone": "+79162000002", "name": "OOO Romashka",
                              "owner": "petrov"}])
    petrov = live_asterisk.phone("102")
    answered = live_asterisk.call_from_pstn(OWNER_FIRST, "+79162000002", "caller_waits.xml",
                                            talk_ms=300)
    finish(petrov)
    assert answered.ok, answered.output
    call = journal.wait_closed_call("+79162000002")
    assert call.answered_by == "petrov"

    # Next time petrov is busy, and so are his colleagues: the task is his.
    phones = busy_phones(live_asterisk)
    missed = live_asterisk.call_from_pstn(OWNER_FIRST, "+79162000002", "caller_any_outcome.xml",
                                          talk_ms=300)
    finish(*phones)
    assert missed.ok, missed.output
    task = journal.wait_task("+79162000002")
    assert task.responsible == "petrov"


def test_given_an_open_task_when_a_manager_talks_to_the_number_then_it_is_closed(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    phones = busy_phones(live_asterisk)
    missed = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000003", "caller_any_outcome.xml",
                                          talk_ms=300)
    finish(*phones)
    assert missed.ok, missed.output
    journal.wait_task("+79162000003")

    # The client calls again and the round-robin reaches petrov, who answers.
    ivanov = live_asterisk.phone("101")
    again = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000003", "caller_waits.xml",
                                         talk_ms=300)
    finish(ivanov)
    assert again.ok, again.output

    def closed() -> Task | None:
        tasks = journal.tasks("+79162000003")
        return tasks[0] if len(tasks) == 1 and tasks[0].status is TaskStatus.DONE else None

    task = wait_for("the task to be closed", closed)
    assert task.closed_by == "ivanov"
    assert task.callback_delay_s is not None


def test_given_an_abandoned_call_then_a_task_too(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000004",
                                          "caller_hangs_up_while_ringing.xml", ring_ms=800)
    finish(ivanov)
    assert caller.ok, caller.output
    assert journal.wait_closed_call("+79162000004").outcome is CallOutcome.ABANDONED
    assert journal.wait_task("+79162000004").responsible == "ivanov"


def test_given_an_after_hours_voicemail_then_the_task_links_the_message(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    caller = live_asterisk.call_from_pstn(AFTER_HOURS, "+79162000005", "caller_waits.xml",
                                          talk_ms=7000)
    assert caller.ok, caller.output
    call = journal.wait_closed_call("+79162000005")
    assert call.outcome is CallOutcome.VOICEMAIL
    task = journal.wait_task("+79162000005")
    assert task.responsible == "kuznetsov"  # the head of sales answers for after-hours
    (recording,) = journal.recordings(call.call_id)
    assert recording.recording_id.endswith("-voicemail")
