"""Models of the built-in CRM's endpoints (contacts, tasks) and of the outbox's (deliveries).

Same rules as ``api.schemas``: request models forbid unknown fields and are strict about
types; query models read text; every answer is built through a response model, so the
OpenAPI document says what the server sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, StringConstraints

from pbxbrain.api.schemas import ID_PATTERN, NUMBER_PATTERN, call_path
from pbxbrain.domain.model import DeliveryFailure, ImportReport, Task, TaskStatus

__all__ = [
    "DELIVERY_ID_PATTERN",
    "CloseTaskBody",
    "ContactIn",
    "ContactsImport",
    "ContactsImportQuery",
    "DeliveriesQuery",
    "DeliveryLinks",
    "DeliveryList",
    "DeliveryOut",
    "ImportProblem",
    "ImportReportOut",
    "PageLinks",
    "RetryAccepted",
    "RetryLinks",
    "TaskLinks",
    "TaskList",
    "TaskOut",
    "TasksQuery",
    "delivery_out",
    "import_report_out",
    "task_out",
    "task_path",
]

DELIVERY_ID_PATTERN = r"^[0-9]{1,18}$"
"""Outbox row ids (and the cursor of their list)."""

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Number = Annotated[str, StringConstraints(pattern=NUMBER_PATTERN)]


def _true_or_false(value: object) -> object:
    """``true`` or ``false`` in a query string, nothing else (no 1, yes, on)."""
    if isinstance(value, str):
        if value in ("true", "false"):
            return value == "true"
        raise ValueError("must be true or false")
    return value


QueryFlag = Annotated[bool, BeforeValidator(_true_or_false)]


class _Request(BaseModel):  # as api.schemas' request models
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Query(BaseModel):  # as api.schemas' query models: text, not strict
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests -------------------------------------------------------------------------------


class ContactIn(_Request):
    """One contact to create (a new number) or update (a known one: only the fields given
    change it)."""

    phone: str = Field(
        description="International (+7 495 123-45-67) or national when numbers."
                    "default_region is set; stored in E.164. Each number once per import.",
        examples=["+74951234567"])
    name: str | None = Field(None, description="The client's name (at most 255 characters).",
                             examples=["Romashka LLC"])
    owner: str | None = Field(None, description="Staff id of the manager who owns the client: "
                                                "the router rings them first.",
                              examples=["ivanov"])
    crm_ref: str | None = Field(None, description="The client's id elsewhere (at most 128 "
                                                  "characters).", examples=["C-1042"])


class ContactsImport(RootModel[list[ContactIn]]):
    """A contact import as JSON: a list of contacts."""

    model_config = ConfigDict(strict=True, frozen=True)


class ContactsImportQuery(_Query):
    """Options of ``POST /v1/contacts``."""

    dry_run: QueryFlag = Field(False, description="true: only check the file and count what "
                                                  "would be created and updated; write nothing.")


class CloseTaskBody(_Request):
    """Who closed the task (optional)."""

    by: Identifier | None = Field(
        None, description="Staff id or short number of the manager who dealt with the task "
                          "(default: the API token's name).", examples=["ivanov"])


class TasksQuery(_Query):
    """Filters and paging of ``GET /v1/tasks``."""

    status: TaskStatus | None = Field(None, description="Only open or only done tasks.")
    responsible: Identifier | None = Field(
        None, description="Only tasks of this manager (staff id or short number).")
    phone: Number | None = Field(None, description="Only tasks to call this number back "
                                                   "(E.164 preferred).")
    limit: int = Field(50, ge=1, le=200, description="Tasks per page.")
    cursor: Identifier | None = Field(
        None, description="Opaque: where the previous page ended (take the next link).")


class DeliveriesQuery(_Query):
    """Paging of ``GET /v1/deliveries/failed``."""

    limit: int = Field(50, ge=1, le=200, description="Deliveries per page.")
    cursor: Annotated[str, StringConstraints(pattern=DELIVERY_ID_PATTERN)] | None = Field(
        None, description="Opaque: where the previous page ended (take the next link).")


# --- responses ------------------------------------------------------------------------------


class PageLinks(_Response):
    """Paging links."""

    next: str | None = Field(description="The next page; null on the last one.")


class ImportProblem(_Response):
    """A record that was not imported, and why."""

    row: int = Field(description="The record's number, from 1: the CSV data row (the header "
                                 "not counted, blank lines skipped) or the list item.")
    field: str = Field(description="The field at fault (phone, name, owner, crm_ref), or "
                                   "empty when the record as a whole is.")
    message: str


class ImportReportOut(_Response):
    """What the import did (or, on a dry run, would do). Every record is created, updated,
    or listed in errors; errors do not stop the other records."""

    total: int = Field(description="Records in the file.")
    created: int = Field(description="New contacts.")
    updated: int = Field(description="Known numbers whose contact got the values given.")
    errors: list[ImportProblem]
    dry_run: bool


class TaskLinks(_Response):
    """Where a task and its call are."""

    self: str
    close: str = Field(description="POST here to close the task.")
    last_call: str | None = Field(description="The latest missed call of the task.")


class TaskOut(_Response):
    """A missed-call task: call the number back."""

    task_id: str
    phone: str = Field(description="The number to call back (E.164 when it parsed).")
    responsible: str | None = Field(description="Staff id of the manager who should call.")
    status: TaskStatus
    due_at: datetime = Field(description="Call back before this.")
    created_at: datetime = Field(description="When the first missed call of the task ended.")
    misses: int = Field(description="Missed calls from the number while the task was open.")
    last_call_id: str | None
    closed_at: datetime | None
    closed_by: str | None = Field(description="Staff id of who called back, or what closed "
                                              "the task by hand (a staff id or token name).")
    callback_delay_s: float | None = Field(description="First missed call to call back; null "
                                                       "when open or closed by hand.")
    crm_ref: str | None
    links: TaskLinks


class TaskList(_Response):
    """A page of tasks, newest first."""

    tasks: list[TaskOut]
    links: PageLinks


class DeliveryLinks(_Response):
    """What can be done with a failed delivery."""

    retry: str = Field(description="POST here to retry the delivery now.")
    call: str | None = Field(description="The call the message is about.")


class DeliveryOut(_Response):
    """An outbox message to the CRM that failed at least once and is not delivered."""

    delivery_id: int
    kind: str = Field(description="missed_call, called_back, call_finished, ...")
    key: str = Field(description="The message's idempotency key at the CRM.")
    call_id: str | None
    status: Literal["retrying", "failed"] = Field(
        description="retrying: retried automatically at next_attempt_at; failed: the CRM "
                    "refused it, retried only by hand.")
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="The next automatic attempt; null "
                                                         "when failed.")
    failed_at: datetime | None = Field(description="When the CRM refused it for good.")
    links: DeliveryLinks


class DeliveryList(_Response):
    """A page of failed deliveries, newest first."""

    deliveries: list[DeliveryOut]
    links: PageLinks


class RetryLinks(_Response):
    """Where to follow the delivery."""

    failed: str = Field(description="The failed deliveries (the message leaves the list once "
                                    "delivered).")


class RetryAccepted(_Response):
    """The delivery is due now: the delivery worker takes it at once."""

    delivery_id: int
    status: Literal["queued"]
    links: RetryLinks


# --- conversions ----------------------------------------------------------------------------


def task_path(task_id: str) -> str:
    """The API path of a task."""
    return f"/v1/tasks/{task_id}"


def import_report_out(report: ImportReport) -> ImportReportOut:
    """The API view of an import report."""
    return ImportReportOut(
        total=report.total, created=report.created, updated=report.updated,
        errors=[ImportProblem(row=e.row, field=e.field, message=e.message)
                for e in report.errors],
        dry_run=report.dry_run)


def task_out(task: Task) -> TaskOut:
    """The API view of a task."""
    path = task_path(task.task_id)
    return TaskOut(
        task_id=task.task_id, phone=task.phone, responsible=task.responsible,
        status=task.status, due_at=task.due_at, created_at=task.created_at,
        misses=task.misses, last_call_id=task.last_call_id, closed_at=task.closed_at,
        closed_by=task.closed_by, callback_delay_s=task.callback_delay_s, crm_ref=task.crm_ref,
        links=TaskLinks(self=path, close=f"{path}/close",
                        last_call=call_path(task.last_call_id) if task.last_call_id else None))


def delivery_out(failure: DeliveryFailure) -> DeliveryOut:
    """The API view of a failed delivery."""
    failed = failure.failed_at is not None
    return DeliveryOut(
        delivery_id=failure.id, kind=failure.kind, key=failure.key, call_id=failure.call_id,
        status="failed" if failed else "retrying", attempts=failure.attempts,
        last_error=failure.last_error, created_at=failure.created_at,
        next_attempt_at=None if failed else failure.next_attempt_at,
        failed_at=failure.failed_at,
        links=DeliveryLinks(retry=f"/v1/deliveries/{failure.id}/retry",
                            call=call_path(failure.call_id) if failure.call_id else None))
