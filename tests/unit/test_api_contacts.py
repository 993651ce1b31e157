"""``/v1/contacts`` and ``/v1/tasks``: the built-in CRM behind the API, on fakes (imports in
JSON and CSV with row errors, dry runs, the 2 MiB limit, task lists, closing by hand)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pbxbrain.domain.model import TaskStatus
from pbxbrain.ports import StoreUnavailable
from tests.support.api_fakes import (
    CRM_TOKEN,
    READER_TOKEN,
    Client,
    FakeContactBook,
    Harness,
    api_config,
    bearer,
    make_deps,
    serve,
)

CRM = bearer(CRM_TOKEN)
CSV = {**CRM, "Content-Type": "text/csv"}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_deps(tmp_path)


@pytest.fixture
def book(harness: Harness) -> FakeContactBook:
    assert harness.book is not None
    return harness.book


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Client]:
    async with serve(harness.deps) as c:
        yield c


async def answer(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


# --- import: JSON -----------------------------------------------------------------------------


async def test_given_a_json_list_then_each_record_reaches_the_book_and_the_report_comes_back(
        client: Client, harness: Harness, book: FakeContactBook) -> None:
    book.contacts["+74951234567"] = {"phone": "+74951234567"}
    body = [{"phone": "+79161234567", "name": "Romashka", "owner": "ivanov", "crm_ref": None},
            {"phone": "+74951234567", "crm_ref": "C-7"},
            {"phone": "nope"},
            {"phone": "+79160000000", "owner": "nobody"}]

    report = await answer(await client.post("/v1/contacts", json=body, headers=CRM), 200)

    assert report == {
        "total": 4, "created": 1, "updated": 1, "dry_run": False,
        "errors": [{"row": 3, "field": "phone", "message": "'nope' is not a valid phone number"},
                   {"row": 4, "field": "owner", "message": "unknown manager 'nobody'"}]}
    assert book.imports == [([{"phone": "+79161234567", "name": "Romashka", "owner": "ivanov"},
                              {"phone": "+74951234567", "crm_ref": "C-7"},
                              {"phone": "nope"},
                              {"phone": "+79160000000", "owner": "nobody"}], False)]
    assert book.contacts["+79161234567"]["owner"] == "ivanov"
    assert harness.notified == ["contacts"]  # cached lookups are forgotten


async def test_given_every_record_refused_then_still_200_with_every_error(
        client: Client, harness: Harness, book: FakeContactBook) -> None:
    body = [{"phone": "1"}, {"phone": "2"}]

    report = await answer(await client.post("/v1/contacts", json=body, headers=CRM), 200)

    assert (report["total"], report["created"], report["updated"]) == (2, 0, 0)
    assert [e["row"] for e in report["errors"]] == [1, 2]
    assert book.contacts == {}
    assert harness.notified == []


async def test_given_an_empty_list_then_an_empty_report(client: Client) -> None:
    report = await answer(await client.post("/v1/contacts", json=[], headers=CRM), 200)

    assert report == {"total": 0, "created": 0, "updated": 0, "errors": [], "dry_run": False}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"phone": "+79161234567"}, None, "must be a JSON list"),
        ("+79161234567", None, "must be a JSON list"),
        (None, None, "must be a JSON list"),
        ([{"phone": "+79161234567"}, {"name": "x"}], "1.phone", "record 2: 1.phone is required"),
        ([{"phone": 79161234567}], "0.phone", "record 1: 0.phone must be a string"),
        ([{"phone": "+79161234567", "email": "a@b"}], "0.email", "is not a known field"),
        ([{"phone": "+79161234567", "name": 5}], "0.name", "must be a string"),
        (["+79161234567"], "0", "record 1: 0 must be a JSON object"),
    ],
)
async def test_given_json_of_the_wrong_shape_then_422_and_nothing_imported(
        client: Client, book: FakeContactBook, body: Any, field: str | None,
        words: str) -> None:
    resp = await client.post("/v1/contacts", data=json.dumps(body),
                             headers={**CRM, "Content-Type": "application/json"})

    error = (await answer(resp, 422))["error"]

    assert error["code"] == "validation_error"
    assert error.get("field") == field
    assert words in error["message"]
    assert book.imports == []


@pytest.mark.parametrize("data", [b"[{", b"", b"\xff\xfe[]", b"[" * 5000 + b"]" * 5000])
async def test_given_malformed_json_then_400(client: Client, book: FakeContactBook,
                                              data: bytes) -> None:
    resp = await client.post("/v1/contacts", data=data,
                             headers={**CRM, "Content-Type": "application/json"})

    assert (await answer(resp, 400))["error"]["code"] == "malformed_json"
    assert book.imports == []


# --- import: CSV ------------------------------------------------------------------------------


async def test_given_csv_then_the_text_reaches_the_book_and_row_errors_come_back(
        client: Client, book: FakeContactBook) -> None:
    text = "phone,name,owner\n+79161234567,Romashka,ivanov\nbad,Nobody,\n"

    report = await answer(await client.post("/v1/contacts", data=text.encode(), headers=CSV),
                          200)

    assert book.imports == [(text, False)]
    assert (report["total"], report["created"]) == (2, 1)
    assert report["errors"] == [{"row": 2, "field": "phone",
                                 "message": "'bad' is not a valid phone number"}]


async def test_given_csv_in_windows_1251_then_it_is_decoded_by_its_charset(
        client: Client, book: FakeContactBook) -> None:
    text = "phone,name\n+79161234567,Ромашка\n"

    resp = await client.post("/v1/contacts", data=text.encode("cp1251"),
                             headers={**CRM, "Content-Type": "text/csv; charset=windows-1251"})

    await answer(resp, 200)
    assert book.imports == [(text, False)]
    assert book.contacts["+79161234567"]["name"] == "Ромашка"


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"name,owner\nRomashka,ivanov\n", "text/csv", 422, "invalid_file"),
        (b'\xef\xbb\xbf [{"phone": "+79161234567"}]', "text/csv", 422, "invalid_file"),
        (b"phone\n\xff\xfe\n", "text/csv", 400, "malformed_csv"),
        (b"phone\n+79161234567\n", "text/csv; charset=klingon", 415, "unsupported_media_type"),
        (b"phone\n+79161234567\n", "text/csv; charset=hex", 415, "unsupported_media_type"),
        (b"phone\n+79161234567\n", "text/plain", 415, "unsupported_media_type"),
        (b"phone=%2B79161234567", "application/x-www-form-urlencoded", 415,
         "unsupported_media_type"),
    ],
)
async def test_given_a_csv_that_cannot_be_read_then_4xx_and_nothing_imported(
        client: Client, book: FakeContactBook, data: bytes, content_type: str, status: int,
        code: str) -> None:
    resp = await client.post("/v1/contacts", data=data,
                             headers={**CRM, "Content-Type": content_type})

    error = (await answer(resp, status))["error"]
    assert error["code"] == code
    assert book.contacts == {}


async def test_given_a_csv_without_a_phone_column_then_422_names_the_header(
        client: Client) -> None:
    resp = await client.post("/v1/contacts", data=b"name\nRomashka\n", headers=CSV)

    error = (await answer(resp, 422))["error"]
    assert error["field"] == "header"
    assert "no phone column" in error["message"]
    assert "nothing was imported" in error["message"]


# --- import: dry run, size, who may ------------------------------------------------------------


async def test_given_dry_run_then_the_book_only_checks_and_nothing_is_forgotten(
        client: Client, harness: Harness, book: FakeContactBook) -> None:
    text = "phone\n+79161234567\n"

    resp = await client.post("/v1/contacts?dry_run=true", data=text.encode(), headers=CSV)

    report = await answer(resp, 200)
    assert (report["created"], report["dry_run"]) == (1, True)
    assert book.imports == [(text, True)]
    assert book.contacts == {}
    assert harness.notified == []


@pytest.mark.parametrize("value", ["yes", "1", "True", ""])
async def test_given_dry_run_not_true_or_false_then_422(client: Client, book: FakeContactBook,
                                                        value: str) -> None:
    resp = await client.post(f"/v1/contacts?dry_run={value}", json=[], headers=CRM)

    error = (await answer(resp, 422))["error"]
    assert (error["field"], error["message"]) == ("dry_run",
                                                  "query parameter dry_run must be true or false")
    assert book.imports == []


async def test_given_a_file_of_a_mebibyte_then_it_is_taken(
        client: Client, book: FakeContactBook) -> None:
    rows = "".join(f"+7916{n:07d},Client {n:07d} with a long enough name\n" for n in range(25000))
    data = ("phone,name\n" + rows).encode()
    assert 1024 * 1024 < len(data) < 2 * 1024 * 1024

    report = await answer(await client.post("/v1/contacts", data=data, headers=CSV), 200)

    assert (report["total"], report["created"], report["errors"]) == (25000, 25000, [])


async def test_given_a_file_over_2_mib_then_413(client: Client, book: FakeContactBook) -> None:
    data = b"phone,name\n" + b"+79161234567," + b"x" * (2 * 1024 * 1024)

    resp = await client.post("/v1/contacts", data=data, headers=CSV)

    error = (await answer(resp, 413))["error"]
    assert error["code"] == "payload_too_large"
    assert "2 MiB" in error["message"]
    assert book.imports == []


async def test_given_a_chunked_file_over_2_mib_then_413(client: Client,
                                                        book: FakeContactBook) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"phone\n"
        for _ in range(2100):
            yield b"+79161234567\n" * 79  # ~1 KiB

    resp = await client.post("/v1/contacts", data=chunks(), headers=CSV)

    assert (await answer(resp, 413))["error"]["code"] == "payload_too_large"
    assert book.imports == []


async def test_given_another_route_then_the_limit_stays_16_kib(client: Client) -> None:
    resp = await client.post("/v1/tasks/1/close", json={"by": "ivanov", "pad": "x" * 17000},
                             headers=CRM)

    assert (await answer(resp, 413))["error"]["code"] == "payload_too_large"


async def test_given_a_read_token_then_no_import_and_no_closing(
        client: Client, book: FakeContactBook) -> None:
    reader = bearer(READER_TOKEN)
    imported = await client.post("/v1/contacts", json=[{"phone": "+79161234567"}],
                                 headers=reader)
    closed = await client.post("/v1/tasks/1/close", headers=reader)
    listed = await client.get("/v1/tasks", headers=reader)

    assert (imported.status, closed.status, listed.status) == (403, 403, 200)
    assert "'contacts'" in (await imported.json())["error"]["message"]
    assert book.imports == []
    assert book.tasks["1"].status == TaskStatus.OPEN


async def test_given_imports_then_they_count_against_the_token_limit(tmp_path: Path) -> None:
    h = make_deps(tmp_path, api_config("rate_limits: {read_per_token: 2}\n"))
    async with serve(h.deps) as client:
        statuses = [(await client.post("/v1/contacts", json=[], headers=CRM)).status
                    for _ in range(3)]
        limited = await client.post("/v1/contacts", json=[], headers=CRM)

        assert statuses == [200, 200, 429]
        assert limited.headers["Retry-After"] == "30"


# --- another CRM, the database down -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/contacts"), ("GET", "/v1/tasks"), ("GET", "/v1/tasks/1"),
     ("POST", "/v1/tasks/1/close")],
)
async def test_given_another_crm_then_409_says_where_contacts_live(
        tmp_path: Path, method: str, path: str) -> None:
    h = make_deps(tmp_path, builtin_crm=False)
    async with serve(h.deps) as client:
        resp = await client.request(method, path, json=[{"phone": "+79161234567"}],
                                    headers=CRM)

        error = (await answer(resp, 409))["error"]
        assert error["code"] == "crm_not_builtin"
        assert "live in the configured CRM (crm.kind: " in error["message"]
        assert h.outbox is not None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v1/contacts", [{"phone": "+79161234567"}]), ("GET", "/v1/tasks", None),
     ("GET", "/v1/tasks/1", None), ("POST", "/v1/tasks/1/close", None)],
)
async def test_given_the_database_down_then_503_with_retry_after(
        client: Client, book: FakeContactBook, method: str, path: str, body: Any) -> None:
    book.fail = StoreUnavailable("connection refused")

    resp = await client.request(method, path, json=body, headers=CRM)

    assert (await answer(resp, 503))["error"]["code"] == "unavailable"
    assert resp.headers["Retry-After"] == "5"


# --- tasks ------------------------------------------------------------------------------------


async def get(client: Client, url: str) -> Any:
    return await answer(await client.get(url, headers=CRM), 200)


async def test_given_tasks_then_listed_newest_first_with_their_links(client: Client) -> None:
    page = await get(client, "/v1/tasks")

    assert [t["task_id"] for t in page["tasks"]] == ["42", "5", "4", "3", "2", "1"]
    assert page["links"]["next"] is None
    task = page["tasks"][-1]
    assert task == {
        "task_id": "1", "phone": "+79161234567", "responsible": "ivanov", "status": "open",
        "due_at": "2027-03-01T09:16:00Z", "created_at": "2027-03-01T09:01:00Z", "misses": 1,
        "last_call_id": "call0001", "closed_at": None, "closed_by": None,
        "callback_delay_s": None, "crm_ref": None,
        "links": {"self": "/v1/tasks/1", "close": "/v1/tasks/1/close",
                  "last_call": "/v1/calls/call0001"}}


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("status=open", ["42", "3", "2", "1"]),
        ("status=done", ["5", "4"]),
        ("responsible=petrov", ["5", "2"]),
        ("responsible=102", ["5", "2"]),  # a short number is the manager's
        ("responsible=gone", []),  # a manager no longer configured: taken as it is
        ("phone=%2B74959876543", ["3"]),
        ("phone=8%20495%20987-65-43", ["3"]),  # national, with formatting
        ("status=open&responsible=ivanov&phone=%2B79161234567", ["42", "1"]),
        ("cursor=3", ["2", "1"]),
        ("cursor=zzz", []),
    ],
)
async def test_given_filters_then_only_those_tasks(client: Client, query: str,
                                                   ids: list[str]) -> None:
    page = await get(client, f"/v1/tasks?{query}")

    assert [t["task_id"] for t in page["tasks"]] == ids


async def test_given_a_limit_then_pages_follow_next_until_null(client: Client) -> None:
    seen: list[str] = []
    url: str | None = "/v1/tasks?status=open&limit=2"
    pages = 0
    while url is not None:
        page = await get(client, url)
        seen += [t["task_id"] for t in page["tasks"]]
        url = page["links"]["next"]
        pages += 1
        if url is not None:
            assert "status=open" in url
            assert "limit=2" in url

    assert seen == ["42", "3", "2", "1"]
    assert pages == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=closed", "status"), ("limit=0", "limit"), ("limit=201", "limit"),
     ("phone=abc", "phone"), ("responsible=a%20b", "responsible"), ("owner=ivanov", "owner"),
     ("status=open&status=done", "status"), ("cursor=%2F", "cursor")],
)
async def test_given_a_bad_query_then_422_names_the_parameter(client: Client, query: str,
                                                              field: str) -> None:
    resp = await client.get(f"/v1/tasks?{query}", headers=CRM)

    assert (await answer(resp, 422))["error"]["field"] == field


async def test_given_a_task_id_then_that_task(client: Client) -> None:
    task = await get(client, "/v1/tasks/4")

    assert (task["status"], task["closed_by"], task["callback_delay_s"]) == ("done", "ivanov",
                                                                            300.0)


@pytest.mark.parametrize("path", ["/v1/tasks/999", "/v1/tasks/..", "/v1/tasks/%20x",
                                  "/v1/tasks/999/close"])
async def test_given_an_unknown_task_then_404(client: Client, path: str) -> None:
    resp = await client.request("POST" if path.endswith("close") else "GET", path, headers=CRM)

    assert (await answer(resp, 404))["error"]["code"] == "not_found"


# --- closing a task ---------------------------------------------------------------------------


async def test_given_no_body_then_the_task_is_closed_by_the_token(
        client: Client, book: FakeContactBook) -> None:
    task = await answer(await client.post("/v1/tasks/1/close", headers=CRM), 200)

    assert (task["status"], task["closed_by"], task["closed_at"]) == (
        "done", "crm", "2027-03-01T10:00:00Z")
    assert task["callback_delay_s"] is None
    assert book.closed == [("1", "crm")]


@pytest.mark.parametrize(("by", "staff_id"), [("petrov", "petrov"), ("103", "sidorov")])
async def test_given_by_then_the_task_is_closed_by_that_manager(
        client: Client, book: FakeContactBook, by: str, staff_id: str) -> None:
    resp = await client.post("/v1/tasks/2/close", json={"by": by}, headers=CRM)

    assert (await answer(resp, 200))["closed_by"] == staff_id
    assert book.closed == [("2", staff_id)]


async def test_given_an_empty_object_then_closed_by_the_token(
        client: Client, book: FakeContactBook) -> None:
    resp = await client.post("/v1/tasks/2/close", json={}, headers=CRM)

    assert (await answer(resp, 200))["closed_by"] == "crm"


async def test_given_a_closed_task_then_closing_again_changes_nothing(
        client: Client, book: FakeContactBook) -> None:
    first = await answer(await client.post("/v1/tasks/3/close", json={"by": "ivanov"},
                                           headers=CRM), 200)
    again = await answer(await client.post("/v1/tasks/3/close", json={"by": "petrov"},
                                           headers=CRM), 200)
    old = await answer(await client.post("/v1/tasks/4/close", headers=CRM), 200)

    assert again == first
    assert again["closed_by"] == "ivanov"
    assert (old["closed_by"], old["closed_at"]) == ("ivanov", "2027-03-01T09:09:00Z")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [
        (b'{"by": "nobody"}', "application/json", 422, "unknown_manager", "by"),
        (b'{"by": "a b"}', "application/json", 422, "validation_error", "by"),
        (b'{"by": 5}', "application/json", 422, "validation_error", "by"),
        (b'{"who": "ivanov"}', "application/json", 422, "validation_error", "who"),
        (b'["ivanov"]', "application/json", 422, "validation_error", None),
        (b'{"by": ', "application/json", 400, "malformed_json", None),
        (b"by=ivanov", "application/x-www-form-urlencoded", 415, "unsupported_media_type",
         None),
    ],
)
async def test_given_a_bad_body_then_4xx_and_the_task_stays_open(
        client: Client, book: FakeContactBook, body: bytes, content_type: str, status: int,
        code: str, field: str | None) -> None:
    resp = await client.post("/v1/tasks/1/close", data=body,
                             headers={**CRM, "Content-Type": content_type})

    error = (await answer(resp, status))["error"]
    assert (error["code"], error.get("field")) == (code, field)
    assert book.tasks["1"].status == TaskStatus.OPEN
