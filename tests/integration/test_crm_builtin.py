"""The built-in CRM and the outbox's delivery side, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pbxbrain.adapters.crm_builtin import BuiltinCrm, ImportRowError
from pbxbrain.adapters.crm_store import ContactRow, SqlOutbox
from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.adapters.outbox import missed_call_message
from pbxbrain.domain.model import (
    CallOutcome,
    Contact,
    InboundCall,
    MissedCall,
    OutboxMessage,
    TaskStatus,
)
from pbxbrain.ports import Crm, OutboxStore

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PHONE = "+79161234567"
STAFF = {"ivanov", "petrov", "kuznetsov"}


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def missed(call_id: str, at: datetime = T0, *, phone: str = PHONE,
           responsible: str | None = "ivanov", due_in: timedelta = timedelta(minutes=15),
           source: str | None = "website") -> MissedCall:
    return MissedCall(call_id=call_id, phone=phone, outcome=CallOutcome.MISSED, at=at,
                      due_at=at + due_in, responsible=responsible, line="+74951234567",
                      source=source)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def crm(store_url: str, clock: Clock) -> AsyncIterator[BuiltinCrm]:
    engine = create_engine(store_url)
    yield BuiltinCrm(engine, staff=STAFF, default_region="RU", clock=clock)
    await engine.dispose()


@pytest.fixture
async def calls(store_url: str) -> AsyncIterator[SqlCallStore]:
    store = SqlCallStore(create_engine(store_url))
    yield store
    await store.close()


def test_given_adapters_then_they_satisfy_their_ports() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")

    def accepts(_crm: Crm, _outbox: OutboxStore) -> None: ...

    accepts(BuiltinCrm(engine), SqlOutbox(engine))


# --------------------------------------------------------------------------- missed calls


async def test_given_new_number_missed_then_contact_and_open_task_for_responsible(
    crm: BuiltinCrm,
) -> None:
    assert await crm.find_contact(PHONE) is None

    await crm.missed_call(missed("c1"), "missed:c1")

    assert await crm.find_contact(PHONE) == Contact(PHONE, "", "ivanov", None, "website")
    [task] = await crm.list_tasks()
    assert (task.phone, task.responsible, task.status, task.misses) == (
        PHONE, "ivanov", TaskStatus.OPEN, 1)
    assert (task.created_at, task.due_at, task.last_call_id) == (
        T0, T0 + timedelta(minutes=15), "c1")


async def test_given_contact_with_owner_then_a_miss_keeps_the_owner(crm: BuiltinCrm) -> None:
    await crm.import_contacts([{"phone": PHONE, "name": "Anna", "owner": "petrov"}])

    await crm.missed_call(missed("c1", responsible="ivanov"), "missed:c1")

    contact = await crm.find_contact(PHONE)
    assert contact is not None
    assert (contact.name, contact.owner) == ("Anna", "petrov")


async def test_given_contact_without_owner_then_the_responsible_becomes_its_owner(
    crm: BuiltinCrm,
) -> None:
    await crm.missed_call(missed("c1", responsible=None), "missed:c1")
    await crm.missed_call(missed("c2", T0 + timedelta(minutes=1), responsible="kuznetsov"),
                          "missed:c2")

    contact = await crm.find_contact(PHONE)
    assert contact is not None
    assert contact.owner == "kuznetsov"
    [task] = await crm.list_tasks()
    assert task.responsible == "kuznetsov"


async def test_given_repeated_misses_then_one_open_task_counts_them(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c1", T0, due_in=timedelta(hours=2)), "missed:c1")
    await crm.missed_call(missed("c2", T0 + timedelta(minutes=5), responsible="petrov"),
                          "missed:c2")
    await crm.missed_call(missed("c3", T0 + timedelta(minutes=10), due_in=timedelta(hours=5)),
                          "missed:c3")

    [task] = await crm.list_tasks()
    assert task.misses == 3
    assert task.responsible == "ivanov"  # the task stays with its manager
    assert task.last_call_id == "c3"
    assert task.created_at == T0
    assert task.due_at == T0 + timedelta(minutes=20)  # the earliest deadline wins


async def test_given_the_same_message_twice_then_it_applies_once(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c1"), "missed:c1")
    await crm.missed_call(missed("c1"), "missed:c1")

    [task] = await crm.list_tasks()
    assert task.misses == 1


async def test_given_misses_delivered_out_of_order_then_the_task_keeps_first_and_last(
    crm: BuiltinCrm,
) -> None:
    await crm.missed_call(missed("c2", T0 + timedelta(minutes=5)), "missed:c2")
    await crm.missed_call(missed("c1", T0), "missed:c1")

    [task] = await crm.list_tasks()
    assert (task.misses, task.created_at, task.last_call_id) == (2, T0, "c2")


async def test_given_concurrent_misses_of_one_number_then_one_open_task(
    crm: BuiltinCrm,
) -> None:
    await asyncio.gather(*(
        crm.missed_call(missed(f"c{i}", T0 + timedelta(seconds=i)), f"missed:c{i}")
        for i in range(12)
    ))

    [task] = await crm.list_tasks()
    assert (task.status, task.misses) == (TaskStatus.OPEN, 12)


async def test_given_anonymous_caller_then_task_but_no_contact(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c1", phone="anonymous"), "missed:c1")

    assert await crm.find_contact("anonymous") is None
    [task] = await crm.list_tasks()
    assert task.phone == "anonymous"


# --------------------------------------------------------------------------- call backs


async def test_given_call_back_then_task_closed_with_who_and_delay(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c1", T0), "missed:c1")
    await crm.missed_call(missed("c2", T0 + timedelta(minutes=3)), "missed:c2")

    await crm.called_back(PHONE, "c3", "petrov", T0 + timedelta(minutes=42), "called_back:c3")

    [task] = await crm.list_tasks()
    assert task.status is TaskStatus.DONE
    assert (task.closed_by, task.closed_at) == ("petrov", T0 + timedelta(minutes=42))
    assert task.callback_delay_s == 42 * 60


async def test_given_closed_task_then_the_next_miss_opens_a_new_one(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c1", T0), "missed:c1")
    await crm.called_back(PHONE, "c2", "ivanov", T0 + timedelta(minutes=5), "called_back:c2")
    await crm.missed_call(missed("c3", T0 + timedelta(hours=1)), "missed:c3")

    tasks = await crm.list_tasks()
    assert [(t.status, t.last_call_id) for t in tasks] == [
        (TaskStatus.OPEN, "c3"), (TaskStatus.DONE, "c1")]
    assert await crm.list_tasks(status=TaskStatus.OPEN) == tasks[:1]


async def test_given_call_back_before_the_miss_then_task_stays_open(crm: BuiltinCrm) -> None:
    await crm.missed_call(missed("c2", T0 + timedelta(minutes=5)), "missed:c2")

    await crm.called_back(PHONE, "c1", "ivanov", T0, "called_back:c1")

    [task] = await crm.list_tasks()
    assert task.status is TaskStatus.OPEN


async def test_given_call_back_without_open_task_then_nothing_happens(crm: BuiltinCrm) -> None:
    await crm.called_back(PHONE, "c1", "ivanov", T0, "called_back:c1")

    assert await crm.list_tasks() == []


async def test_given_manager_already_talked_after_the_miss_then_its_late_task_is_closed(
    crm: BuiltinCrm, calls: SqlCallStore,
) -> None:
    # The call back was answered before the miss's message reached the CRM.
    back = InboundCall("c2", "ch2", PHONE, "89161234567", "+74951234567",
                       T0 + timedelta(minutes=10))
    await calls.open_call(back)
    await calls.mark_answered("c2", T0 + timedelta(minutes=11), "petrov")

    await crm.missed_call(missed("c1", T0), "missed:c1")

    [task] = await crm.list_tasks()
    assert task.status is TaskStatus.DONE
    assert (task.closed_by, task.callback_delay_s) == ("petrov", 11 * 60)


# --------------------------------------------------------------------------- tasks (API)


async def test_given_tasks_then_list_filters_and_pages_newest_first(crm: BuiltinCrm) -> None:
    for i in range(5):
        await crm.missed_call(
            missed(f"c{i}", T0 + timedelta(minutes=i), phone=f"+7916123450{i}",
                   responsible="ivanov" if i % 2 else "petrov"),
            f"missed:c{i}")

    first = await crm.list_tasks(limit=2)
    second = await crm.list_tasks(limit=2, before=first[-1].task_id)
    third = await crm.list_tasks(limit=2, before=second[-1].task_id)
    assert [t.last_call_id for t in first + second + third] == ["c4", "c3", "c2", "c1", "c0"]
    assert [t.last_call_id for t in await crm.list_tasks(responsible="ivanov")] == ["c3", "c1"]
    assert [t.last_call_id for t in await crm.list_tasks(phone="+79161234502")] == ["c2"]
    assert await crm.list_tasks(before="x") == []


async def test_given_open_task_then_closing_by_hand_keeps_no_delay(
    crm: BuiltinCrm, clock: Clock,
) -> None:
    await crm.missed_call(missed("c1"), "missed:c1")
    [task] = await crm.list_tasks()
    clock.now = T0 + timedelta(hours=1)

    closed = await crm.close_task(task.task_id, "crm-token")
    again = await crm.close_task(task.task_id, "someone-else")

    assert closed is not None
    assert (closed.status, closed.closed_by, closed.closed_at, closed.callback_delay_s) == (
        TaskStatus.DONE, "crm-token", T0 + timedelta(hours=1), None)
    assert again == closed
    assert await crm.get_task(task.task_id) == closed
    assert await crm.close_task("999", "x") is None
    assert await crm.get_task("nope") is None
    assert await crm.get_task("9" * 40) is None


# --------------------------------------------------------------------------- import


async def test_given_csv_with_bad_rows_then_good_rows_imported_and_each_bad_one_reported(
    crm: BuiltinCrm,
) -> None:
    await crm.import_contacts([{"phone": "+79160000001", "name": "Old", "owner": "ivanov"}])
    csv_text = (
        "phone;name;owner;crm_ref\n"
        "8 916 000-00-01;Renamed;;\n"  # known: updated, owner kept
        "+79160000002;Boris;petrov;C_7\n"  # new
        "12345;Short;;\n"  # bad number
        "+79160000003;Vera;sidorov;\n"  # unknown manager
        "+7 916 000 00 02;Again;;\n"  # duplicate of row 2
        "+79160000004;Too;many;columns;here\n"  # wrong column count
        "\n"
        "+79160000005;;;\n"  # new, no name
    )

    report = await crm.import_contacts(csv_text)

    assert (report.total, report.created, report.updated) == (7, 2, 1)
    assert report.errors == (
        ImportRowError(3, "phone", "'12345' is not a valid phone number; write it as "
                                   "+74951234567 (+, country code, number)"),
        ImportRowError(4, "owner", "unknown manager 'sidorov'; staff has: ivanov, kuznetsov, "
                                   "petrov"),
        ImportRowError(5, "phone", "+79160000002 is already in row 2; give each number once"),
        ImportRowError(6, "", "5 columns, the header has 4"),
    )
    assert not report.ok
    old = await crm.find_contact("+79160000001")
    boris = await crm.find_contact("+79160000002")
    assert old == Contact("+79160000001", "Renamed", "ivanov", None, "import")
    assert boris == Contact("+79160000002", "Boris", "petrov", "C_7", "import")
    assert await crm.find_contact("+79160000003") is None
    assert await crm.find_contact("+79160000005") is not None


async def test_given_json_import_then_rows_are_checked_and_written(crm: BuiltinCrm) -> None:
    report = await crm.import_contacts(
        '[{"phone": "+79160000001", "name": "A", "crm_ref": 17},'
        ' "not an object",'
        ' {"phone": "+79160000002", "onwer": "ivanov"},'
        ' {"name": "no phone"}]')

    assert (report.total, report.created, report.updated) == (4, 1, 0)
    assert [(e.row, e.field) for e in report.errors] == [(2, ""), (3, "onwer"), (4, "phone")]
    contact = await crm.find_contact("+79160000001")
    assert contact is not None
    assert contact.crm_ref == "17"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "the file is empty"),
        ("phone,nmae\n+79160000001,A\n", "the header names the columns phone, nmae"),
        ("name\nA\n", "the header names the columns name"),
        ('{"phone": "+79160000001"}', "expected a JSON list of contacts"),
        ("[{]", "not valid JSON"),
    ],
)
async def test_given_file_of_the_wrong_shape_then_nothing_is_imported(
    crm: BuiltinCrm, data: str, message: str,
) -> None:
    report = await crm.import_contacts(data)

    assert (report.created, report.updated) == (0, 0)
    [error] = report.errors
    assert error.row == 0
    assert message in error.message
    assert await crm.find_contact("+79160000001") is None


async def test_given_dry_run_then_the_report_counts_but_nothing_is_written(
    crm: BuiltinCrm,
) -> None:
    await crm.import_contacts([{"phone": "+79160000001"}])

    report = await crm.import_contacts("phone,name\n+79160000001,A\n+79160000002,B\n",
                                       dry_run=True)

    assert (report.created, report.updated, report.dry_run, report.ok) == (1, 1, True, True)
    assert await crm.find_contact("+79160000002") is None
    contact = await crm.find_contact("+79160000001")
    assert contact is not None
    assert contact.name == ""


async def test_given_large_import_then_it_is_written_in_one_go(crm: BuiltinCrm) -> None:
    rows = [{"phone": f"+7916{i:07d}", "owner": "ivanov"} for i in range(1200)]

    report = await crm.import_contacts(rows)

    assert (report.created, report.errors) == (1200, ())
    async with crm.engine.connect() as conn:
        owners = (await conn.execute(select(ContactRow.owner))).scalars().all()
    assert Counter(owners) == {"ivanov": 1200}


# --------------------------------------------------------------------------- the outbox


async def queue(calls: SqlCallStore, n: int, *, first: int = 0,
                at: datetime = T0) -> list[str]:
    keys = []
    for i in range(first, first + n):
        call_id = f"c{i}"
        await calls.open_call(InboundCall(call_id, f"ch{i}", PHONE, PHONE, "+74951234567", at))
        msg = missed_call_message(missed(call_id, at + timedelta(seconds=i)))
        await calls.close_call(call_id, CallOutcome.MISSED, at + timedelta(seconds=i),
                               outbox=[msg])
        keys.append(msg.key)
    return keys


@pytest.fixture
async def outbox(store_url: str, clock: Clock) -> AsyncIterator[SqlOutbox]:
    engine = create_engine(store_url)
    yield SqlOutbox(engine, clock=clock)
    await engine.dispose()


async def test_given_due_rows_then_a_claim_leases_them_until_the_lease_ends(
    outbox: SqlOutbox, calls: SqlCallStore,
) -> None:
    keys = await queue(calls, 3)
    now = T0 + timedelta(minutes=1)

    claimed = await outbox.claim_deliveries("node-a", now, limit=2, lease_s=60)
    other = await outbox.claim_deliveries("node-b", now, limit=10, lease_s=60)
    during = await outbox.claim_deliveries("node-b", now + timedelta(seconds=59), 10, 60)
    after = await outbox.claim_deliveries("node-b", now + timedelta(seconds=60), 10, 60)

    assert [d.key for d in claimed] == keys[:2]
    assert claimed[0].payload["phone"] == PHONE
    assert (claimed[0].kind, claimed[0].attempts, claimed[0].call_id) == ("missed_call", 0, "c0")
    assert [d.key for d in other] == keys[2:]
    assert during == []
    assert [d.key for d in after] == keys  # the leases ran out
    assert await outbox.next_due_at() == now + timedelta(seconds=120)


async def test_given_rows_not_yet_due_then_nothing_is_claimed(
    outbox: SqlOutbox, calls: SqlCallStore,
) -> None:
    await queue(calls, 1, at=T0 + timedelta(hours=1))

    assert await outbox.claim_deliveries("a", T0) == []
    assert await outbox.next_due_at() == T0 + timedelta(hours=1)


async def test_given_outcomes_then_rows_are_delivered_retried_failed_and_retried_by_hand(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    await queue(calls, 3)
    a, b, c = await outbox.claim_deliveries("n", T0 + timedelta(minutes=1))

    await outbox.delivered([a.id], T0 + timedelta(minutes=1))
    await outbox.delivery_failed(b.id, "CRM said 503", T0 + timedelta(minutes=5))
    await outbox.delivery_rejected(c.id, "CRM said 400: bad phone", T0 + timedelta(minutes=1))

    assert await outbox.failing() == (2, "CRM said 400: bad phone")
    failures = await outbox.failed_deliveries()
    assert [(f.key, f.attempts, f.last_error, f.failed_at) for f in failures] == [
        ("missed:c2", 1, "CRM said 400: bad phone", T0 + timedelta(minutes=1)),
        ("missed:c1", 1, "CRM said 503", None),
    ]
    assert failures[1].next_attempt_at == T0 + timedelta(minutes=5)
    # b is due again at +5 min; c never, until retried by hand.
    assert await outbox.claim_deliveries("n", T0 + timedelta(minutes=4)) == []
    assert await outbox.next_due_at() == T0 + timedelta(minutes=5)
    later = await outbox.claim_deliveries("n", T0 + timedelta(hours=9), lease_s=7200)
    assert [d.key for d in later] == ["missed:c1"]
    assert later[0].attempts == 1

    clock.now = T0 + timedelta(hours=10)
    assert await outbox.retry_now(c.id)
    assert not await outbox.retry_now(a.id)  # delivered already
    assert not await outbox.retry_now(12345)
    again = await outbox.claim_deliveries("n", T0 + timedelta(hours=10))
    assert [d.key for d in again] == ["missed:c2"]


async def test_given_node_restarted_then_it_takes_back_its_own_leases(
    outbox: SqlOutbox, calls: SqlCallStore,
) -> None:
    await queue(calls, 2)
    now = T0 + timedelta(minutes=1)
    await outbox.claim_deliveries("node-a", now, limit=1, lease_s=600)
    await outbox.claim_deliveries("node-b", now, limit=1, lease_s=600)

    assert await outbox.release_claims("node-a") == 1
    assert [d.key for d in await outbox.claim_deliveries("node-a", now)] == ["missed:c0"]


async def test_given_concurrent_claimers_then_no_row_is_claimed_twice(
    store_url: str, calls: SqlCallStore,
) -> None:
    keys = await queue(calls, 60)
    engines = [create_engine(store_url) for _ in range(4)]
    outboxes = [SqlOutbox(e) for e in engines]
    now = T0 + timedelta(minutes=5)
    seen: list[str] = []

    async def claimer(outbox: SqlOutbox, node: str) -> None:
        while batch := await outbox.claim_deliveries(node, now, limit=3, lease_s=600):
            seen.extend(d.key for d in batch)

    try:
        await asyncio.gather(*(claimer(o, f"node-{i}") for i, o in enumerate(outboxes * 2)))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sorted(seen) == sorted(keys)
    assert Counter(seen).most_common(1)[0][1] == 1


async def test_given_outbox_message_of_other_kind_then_it_is_claimed_as_stored(
    outbox: SqlOutbox, calls: SqlCallStore,
) -> None:
    await calls.open_call(InboundCall("x", "chx", PHONE, PHONE, "+74951234567", T0))
    await calls.close_call("x", CallOutcome.ANSWERED, T0, outbox=[
        OutboxMessage(key="k", kind="custom", payload={"a": [1, {"b": None}]})])

    [row] = await outbox.claim_deliveries("n", T0)

    assert (row.kind, row.payload, row.call_id) == ("custom", {"a": [1, {"b": None}]}, "x")
