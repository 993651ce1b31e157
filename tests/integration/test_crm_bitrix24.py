"""Bitrix24Crm against a local fake portal that follows Bitrix24's documented REST formats.

The fake answers ``POST /rest/<user>/<code>/<method>`` with ``{"result": …}`` or
``{"error": "CODE", "error_description": "…"}`` and keeps what a portal would keep: CRM
entities by phone, registered calls, tasks with their comments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pbxbrain.adapters.crm_bitrix24 import Bitrix24Crm
from pbxbrain.domain.model import CallOutcome, CallSummary, Contact, Direction, MissedCall
from pbxbrain.ports import CrmRejected, CrmUnavailable

CODE = "s3cr3tc0de"
PHONE = "+79161234567"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PREFIX = {"CONTACT": "C", "LEAD": "L", "COMPANY": "CO"}


def missed(call_id: str = "c1", *, responsible: str | None = "ivanov",
           due_in: timedelta = timedelta(minutes=15)) -> MissedCall:
    return MissedCall(call_id=call_id, phone=PHONE, outcome=CallOutcome.MISSED, at=T0,
                      due_at=T0 + due_in, responsible=responsible, line="+74951234567",
                      source="website")


def error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)


@dataclass
class Portal:
    """A Bitrix24 portal, as far as pbxbrain talks to it."""

    telephony: bool = True
    hang: bool = False
    entities: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    inject: list[web.Response] = field(default_factory=list)  # answers to the next requests
    released: asyncio.Event = field(default_factory=asyncio.Event)
    next_id: int = 1

    def methods(self) -> list[str]:
        return [m for m, _ in self.requests]

    def params(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.requests if m == method]

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["user"] != "1" or request.match_info["code"] != CODE:
            return error(401, "INVALID_CREDENTIALS", "Invalid request credentials")
        method = request.match_info["method"]
        params = await request.json()
        self.requests.append((method, params))
        if self.hang:
            await self.released.wait()
        if self.inject:
            return self.inject.pop(0)
        handler = getattr(self, "m_" + method.lower().replace(".", "_"), None)
        if handler is None:
            return error(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        answer: web.Response = handler(params)
        return answer

    def ok(self, result: Any) -> web.Response:
        return web.json_response({"result": result, "time": {"start": 0, "finish": 0}})

    def entity(self, kind: str, phone: str, name: str, assigned: int) -> dict[str, Any]:
        found = {"CRM_ENTITY_TYPE": kind, "CRM_ENTITY_ID": self.new_id(), "NAME": name,
                 "ASSIGNED_BY_ID": assigned, "PHONE": phone,
                 "ASSIGNED_BY": {"ID": str(assigned), "TIMEMAN_STATUS": "OPENED"}}
        self.entities.append(found)
        return found

    def m_telephony_externalcall_searchcrmentities(self, p: dict[str, Any]) -> web.Response:
        if not p.get("PHONE_NUMBER"):
            return error(400, "ERROR_CORE", "PHONE_NUMBER is empty")
        return self.ok([{k: v for k, v in e.items() if k != "PHONE"}
                        for e in self.entities if e["PHONE"] == p["PHONE_NUMBER"]])

    def m_telephony_externalcall_register(self, p: dict[str, Any]) -> web.Response:
        if not self.telephony:
            return error(401, "WRONG_AUTH_TYPE",
                         "Current authorization type is denied for this method")
        if p.get("TYPE") not in (1, 2, 3, 4, 5):
            return error(400, "ERROR_CORE", "Unknown TYPE")
        if not p.get("USER_ID"):
            return error(400, "ERROR_CORE", "USER_ID or USER_PHONE_INNER should be set")
        for call_id, call in self.calls.items():
            if call["EXTERNAL_CALL_ID"] == p.get("EXTERNAL_CALL_ID"):
                return self.ok({"CALL_ID": call_id, **call["crm"]})
        crm: dict[str, Any] = {"CRM_CREATED_LEAD": None, "CRM_CREATED_ENTITIES": []}
        if p.get("CRM_ENTITY_TYPE"):
            crm.update(CRM_ENTITY_TYPE=p["CRM_ENTITY_TYPE"], CRM_ENTITY_ID=p["CRM_ENTITY_ID"])
        elif p.get("CRM_CREATE") == 1:
            lead = self.entity("LEAD", p["PHONE_NUMBER"], "", int(p["USER_ID"]))
            crm.update(CRM_CREATED_LEAD=lead["CRM_ENTITY_ID"], CRM_ENTITY_TYPE="LEAD",
                       CRM_ENTITY_ID=lead["CRM_ENTITY_ID"],
                       CRM_CREATED_ENTITIES=[{"ENTITY_TYPE": "LEAD",
                                              "ENTITY_ID": lead["CRM_ENTITY_ID"]}])
        call_id = f"externalCall.{self.new_id()}"
        self.calls[call_id] = {**p, "crm": crm, "finished": None}
        return self.ok({"CALL_ID": call_id, **crm})

    def m_telephony_externalcall_finish(self, p: dict[str, Any]) -> web.Response:
        call = self.calls.get(p.get("CALL_ID", ""))
        if call is None:
            return error(400, "ERROR_CORE", "Call is not found (call should be registered "
                                            "prior to finishing)")
        call["finished"] = p
        return self.ok({"CALL_ID": p["CALL_ID"], "CALL_FAILED_CODE": p.get("STATUS_CODE")})

    def m_crm_contact_add(self, p: dict[str, Any]) -> web.Response:
        fields = p["fields"]
        contact = self.entity("CONTACT", fields["PHONE"][0]["VALUE"], fields["NAME"],
                              int(fields["ASSIGNED_BY_ID"]))
        return self.ok(contact["CRM_ENTITY_ID"])

    def m_tasks_task_list(self, p: dict[str, Any]) -> web.Response:
        f = p.get("filter", {})
        found = [
            {"id": str(i), "deadline": t["deadline"], "responsibleId": t["responsibleId"]}
            for i, t in sorted(self.tasks.items())
            if ("UF_CRM_TASK" not in f or f["UF_CRM_TASK"] in t["ufCrmTask"])
            and ("TAG" not in f or f["TAG"] in t["tags"])
            and ("!REAL_STATUS" not in f or int(t["status"]) != f["!REAL_STATUS"])
        ]
        return self.ok({"tasks": found})

    def m_tasks_task_add(self, p: dict[str, Any]) -> web.Response:
        fields = p.get("fields") or {}
        if not fields.get("TITLE"):
            return error(400, "ERROR_CORE", "Task title not specified<br>")
        if not fields.get("RESPONSIBLE_ID"):
            return error(400, "ERROR_CORE", "Assignee not specified<br>")
        task_id = self.new_id()
        self.tasks[task_id] = {
            "title": fields["TITLE"], "description": fields.get("DESCRIPTION", ""),
            "responsibleId": str(fields["RESPONSIBLE_ID"]), "deadline": fields.get("DEADLINE"),
            "ufCrmTask": fields.get("UF_CRM_TASK", []), "tags": fields.get("TAGS", []),
            "status": "2", "comments": [],
        }
        return self.ok({"task": {"id": str(task_id), "title": fields["TITLE"]}})

    def m_tasks_task_update(self, p: dict[str, Any]) -> web.Response:
        task = self.tasks[int(p["taskId"])]
        if "DEADLINE" in p["fields"]:
            task["deadline"] = p["fields"]["DEADLINE"]
        return self.ok({"task": {"id": str(p["taskId"])}})

    def m_task_commentitem_add(self, p: dict[str, Any]) -> web.Response:
        self.tasks[int(p["TASKID"])]["comments"].append(p["FIELDS"]["POST_MESSAGE"])
        return self.ok(self.new_id())

    def m_tasks_task_complete(self, p: dict[str, Any]) -> web.Response:
        self.tasks[int(p["taskId"])]["status"] = "5"
        return self.ok({"task": {"id": str(p["taskId"]), "status": "5"}})


@pytest.fixture
async def portal() -> AsyncIterator[Portal]:
    p = Portal()
    yield p
    p.released.set()


@pytest.fixture
async def server(portal: Portal) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/rest/{user}/{code}/{method}", portal.handle)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield srv
    portal.released.set()
    await srv.close()


@pytest.fixture
async def crm(server: TestServer) -> AsyncIterator[Bitrix24Crm]:
    async with aiohttp.ClientSession() as session:
        yield Bitrix24Crm(session, str(server.make_url(f"/rest/1/{CODE}/")),
                          crm_ids={"ivanov": "17", "petrov": "18"}, timeout_s=0.3)


# --------------------------------------------------------------------------- missed calls


async def test_given_new_number_missed_then_call_registered_as_missed_and_task_made(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.missed_call(missed(), "missed:c1")

    assert portal.methods() == [
        "telephony.externalCall.searchCrmEntities", "telephony.externalcall.register",
        "telephony.externalcall.finish", "tasks.task.list", "tasks.task.add"]
    [register] = portal.params("telephony.externalcall.register")
    assert register == {"USER_ID": 17, "PHONE_NUMBER": PHONE, "TYPE": 2,
                        "CALL_START_DATE": "2026-12-02T09:00:00+00:00", "CRM_CREATE": 1,
                        "SHOW": 0, "EXTERNAL_CALL_ID": "c1"}
    [finish] = portal.params("telephony.externalcall.finish")
    assert (finish["USER_ID"], finish["DURATION"], finish["STATUS_CODE"]) == (17, 0, "304")
    [lead] = portal.entities
    [task] = portal.tasks.values()
    assert lead["CRM_ENTITY_TYPE"] == "LEAD"
    assert task["ufCrmTask"] == [f"L_{lead['CRM_ENTITY_ID']}"]
    assert (task["responsibleId"], task["deadline"], task["tags"]) == (
        "17", "2026-12-02T09:15:00+00:00", ["pbxbrain"])
    assert PHONE in task["title"]
    assert "pbxbrain call id: c1" in task["description"]


async def test_given_known_contact_then_call_bound_to_it_and_its_manager_tasked(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    contact = portal.entity("CONTACT", PHONE, "Anna", 99)
    portal.entity("LEAD", PHONE, "old lead", 98)

    await crm.missed_call(missed(responsible=None), "missed:c1")

    [register] = portal.params("telephony.externalcall.register")
    assert (register["CRM_ENTITY_TYPE"], register["CRM_ENTITY_ID"], register["USER_ID"]) == (
        "CONTACT", contact["CRM_ENTITY_ID"], 99)
    [task] = portal.tasks.values()
    assert task["ufCrmTask"] == [f"C_{contact['CRM_ENTITY_ID']}"]
    assert task["responsibleId"] == "99"


async def test_given_repeated_misses_then_one_task_with_comments_and_earliest_deadline(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.missed_call(missed("c1", due_in=timedelta(hours=2)), "missed:c1")
    await crm.missed_call(missed("c2", due_in=timedelta(minutes=30)), "missed:c2")
    await crm.missed_call(missed("c3", due_in=timedelta(hours=5)), "missed:c3")

    [task] = portal.tasks.values()
    assert len(task["comments"]) == 2
    assert task["comments"][0].startswith("Missed again.")
    assert task["deadline"] == "2026-12-02T09:30:00+00:00"


async def test_given_message_delivered_twice_then_still_one_task_and_one_call(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.missed_call(missed("c1"), "missed:c1")
    await crm.missed_call(missed("c1"), "missed:c1")

    assert len(portal.tasks) == 1
    assert len(portal.calls) == 1  # same EXTERNAL_CALL_ID: same registration


async def test_given_call_back_then_open_tasks_completed_with_a_comment(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.missed_call(missed("c1"), "missed:c1")

    await crm.called_back(PHONE, "c2", "petrov", T0 + timedelta(minutes=7), "called_back:c2")
    await crm.called_back(PHONE, "c2", "petrov", T0 + timedelta(minutes=7), "called_back:c2")

    [task] = portal.tasks.values()
    assert task["status"] == "5"
    assert task["comments"] == ["Called back by petrov at 2026-12-02T09:07:00+00:00 "
                                "(pbxbrain call id c2)."]


async def test_given_call_back_of_unknown_number_then_nothing(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.called_back(PHONE, "c2", "petrov", T0, "called_back:c2")

    assert portal.methods() == ["telephony.externalCall.searchCrmEntities"]


async def test_given_webhook_refused_telephony_then_contact_and_task_all_the_same(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    portal.telephony = False

    await crm.missed_call(missed("c1"), "missed:c1")
    await crm.missed_call(missed("c2"), "missed:c2")

    [contact] = portal.entities
    [task] = portal.tasks.values()
    assert (contact["CRM_ENTITY_TYPE"], contact["ASSIGNED_BY_ID"]) == ("CONTACT", 17)
    assert task["ufCrmTask"] == [f"C_{contact['CRM_ENTITY_ID']}"]
    assert len(task["comments"]) == 1
    assert portal.methods().count("telephony.externalcall.register") == 1  # not asked again
    assert not crm.telephony


# --------------------------------------------------------------------------- errors


async def test_given_query_limit_exceeded_then_unavailable_and_a_retry_makes_one_task(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    portal.inject = [error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")]

    with pytest.raises(CrmUnavailable, match="QUERY_LIMIT_EXCEEDED") as caught:
        await crm.missed_call(missed("c1"), "missed:c1")
    await crm.missed_call(missed("c1"), "missed:c1")

    assert not isinstance(caught.value, CrmRejected)
    assert len(portal.tasks) == 1


async def test_given_operation_time_limit_midway_then_the_retry_finishes_the_job(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    await crm.missed_call(missed("c0"), "missed:c0")  # the client and its task exist
    portal.requests.clear()
    portal.inject = [portal.ok(list(portal.entities)),  # search answers
                     error(429, "OPERATION_TIME_LIMIT", "Method is blocked")]

    with pytest.raises(CrmUnavailable, match="OPERATION_TIME_LIMIT"):
        await crm.missed_call(missed("c1"), "missed:c1")
    await crm.missed_call(missed("c1"), "missed:c1")

    [task] = portal.tasks.values()
    assert len(task["comments"]) == 1


async def test_given_bad_request_then_rejected_with_bitrix24s_words(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    portal.inject = [portal.ok([]),
                     error(400, "ERROR_CORE", "Unsupported phone number format.")]

    with pytest.raises(CrmRejected, match="ERROR_CORE: Unsupported phone number format"):
        await crm.missed_call(missed("c1"), "missed:c1")


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "INVALID_CREDENTIALS"), (401, "insufficient_scope"), (403, "ACCESS_DENIED"),
     (404, "ERROR_METHOD_NOT_FOUND"), (500, "INTERNAL_SERVER_ERROR")],
)
async def test_given_setup_or_server_error_then_unavailable_until_fixed(
    crm: Bitrix24Crm, portal: Portal, status: int, code: str,
) -> None:
    portal.inject = [error(status, code, "whatever")]

    with pytest.raises(CrmUnavailable, match=code) as caught:
        await crm.missed_call(missed("c1"), "missed:c1")

    assert not isinstance(caught.value, CrmRejected)
    assert CODE not in str(caught.value)  # the webhook's secret never reaches logs


async def test_given_wrong_webhook_code_then_unavailable_without_the_code(
    server: TestServer,
) -> None:
    async with aiohttp.ClientSession() as session:
        crm = Bitrix24Crm(session, str(server.make_url("/rest/1/wrong-code")))
        with pytest.raises(CrmUnavailable, match="INVALID_CREDENTIALS") as caught:
            await crm.find_contact(PHONE)
    assert "wrong-code" not in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        web.Response(status=200, text="<html>maintenance</html>"),
        web.Response(status=502, text="Bad gateway"),
        web.json_response({"result": "not a list"}),
        web.json_response({"unexpected": True}),
    ],
    ids=["html", "502", "wrong-type", "no-result"],
)
async def test_given_malformed_answer_then_unavailable(
    crm: Bitrix24Crm, portal: Portal, answer: web.Response,
) -> None:
    portal.inject = [answer]

    with pytest.raises(CrmUnavailable) as caught:
        await crm.find_contact(PHONE)

    assert not isinstance(caught.value, CrmRejected)


async def test_given_portal_slower_than_the_timeout_then_unavailable(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    portal.hang = True

    with pytest.raises(CrmUnavailable, match=r"did not answer within 0\.3 s"):
        await crm.missed_call(missed("c1"), "missed:c1")


# --------------------------------------------------------------------------- lookups, log


async def test_given_contact_then_lookup_maps_its_responsible_to_a_manager(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    contact = portal.entity("CONTACT", PHONE, "Anna Petrova", 18)

    found = await crm.find_contact(PHONE)

    assert found == Contact(PHONE, "Anna Petrova", "petrov", f"C_{contact['CRM_ENTITY_ID']}")
    assert portal.params("telephony.externalCall.searchCrmEntities") == [
        {"PHONE_NUMBER": PHONE}]


async def test_given_contact_of_a_user_who_is_no_manager_then_no_owner(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    portal.entity("COMPANY", PHONE, "Daisy LLC", 1)

    found = await crm.find_contact(PHONE)

    assert found is not None
    assert found.owner is None
    assert (found.crm_ref or "").startswith("CO_")


async def test_given_unknown_number_then_no_contact(crm: Bitrix24Crm) -> None:
    assert await crm.find_contact(PHONE) is None


async def test_given_answered_call_then_logged_with_duration_and_recording(
    crm: Bitrix24Crm, portal: Portal,
) -> None:
    call = CallSummary(call_id="c9", direction=Direction.OUTBOUND, channel_id="ch",
                       caller="101", caller_raw="101", dialed=PHONE, started_at=T0,
                       answered_at=T0 + timedelta(seconds=5),
                       ended_at=T0 + timedelta(seconds=95), outcome=CallOutcome.ANSWERED,
                       answered_by="petrov")
    unanswered = CallSummary(call_id="c8", direction=Direction.INBOUND, channel_id="ch",
                             caller=PHONE, caller_raw=PHONE, dialed="+74951234567",
                             started_at=T0, ended_at=T0, outcome=CallOutcome.MISSED)

    await crm.log_call(call, "https://pbx.example/rec/c9", "finished:c9")
    await crm.log_call(unanswered, None, "finished:c8")

    [register] = portal.params("telephony.externalcall.register")
    [finish] = portal.params("telephony.externalcall.finish")
    assert (register["TYPE"], register["USER_ID"], register["PHONE_NUMBER"]) == (1, 18, PHONE)
    assert (finish["DURATION"], finish["STATUS_CODE"], finish["RECORD_URL"]) == (
        90, "200", "https://pbx.example/rec/c9")

