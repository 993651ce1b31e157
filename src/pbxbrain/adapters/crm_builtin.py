"""The built-in CRM: contacts and missed-call tasks in pbxbrain's own database.

``BuiltinCrm`` is the ``Crm`` port on the ``contacts``/``tasks``/``crm_applied`` tables
(``adapters/crm_store.py``), plus what the HTTP API needs: contact import, task lists,
closing a task by hand. The rules:

* Every outbox delivery is applied once: its key goes into ``crm_applied`` in the same
  transaction as its effect, so a message delivered twice changes nothing the second time.
* ``missed_call``: the caller's contact is created when the number is new (only E.164
  numbers: an anonymous caller has no contact), and gets ``responsible`` as its owner when
  it had none: the owner is the manager the router rings first next time (sticky). The
  number's open task takes the miss: created, or updated (``misses`` + 1, the earliest
  deadline, the latest call); the database's partial unique index keeps it to one open task
  per phone even when two nodes deliver misses of one number at once.
* ``called_back``: a manager talked to the number: its open task is closed with who, when,
  and the delay since the first miss. Deliveries may come out of order (retries, several
  nodes), so ``missed_call`` also checks the calls table: when a manager already talked to
  the number after this miss, the task is closed at once.
* ``log_call`` and ``screen_pop`` do nothing: the calls table already holds every call.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import bindparam, case, func, or_, select, text, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from pbxbrain.adapters.crm_store import ContactRow, CrmApplied, SqlAccess, TaskRow
from pbxbrain.adapters.db import Call, table_of
from pbxbrain.domain.model import (
    CallSummary,
    Contact,
    ImportReport,
    ImportRowError,
    MissedCall,
    Task,
    TaskStatus,
)
from pbxbrain.domain.phone import to_e164
from pbxbrain.ports import CrmUnavailable, StoreUnavailable

__all__ = ["BuiltinCrm", "ImportReport", "ImportRowError"]

IMPORT_FIELDS: Final = ("phone", "name", "owner", "crm_ref")
_MAX_NAME: Final = 255
_MAX_REF: Final = 128
_CHUNK: Final = 500
_OPEN_ONLY = text("status = 'open'")  # the predicate of uq_tasks_open_phone, verbatim
_FIND_CONTACT: Final = select(ContactRow).where(ContactRow.phone == bindparam("b_phone"))
_OPEN_TASK: Final = select(TaskRow.id, TaskRow.created_at).where(
    TaskRow.phone == bindparam("b_phone"), TaskRow.status == TaskStatus.OPEN.value)
_T = TypeVar("_T")
_YIELD_EVERY: Final = 256  # records validated between two yields to the event loop
# What no database column can hold: NUL (PostgreSQL refuses it) and lone surrogates (not
# encodable as UTF-8; JSON can carry them as \ud800).
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _ImportRow:
    row: int
    phone: str
    name: str | None
    owner: str | None
    crm_ref: str | None


class BuiltinCrm(SqlAccess):
    """``Crm`` on pbxbrain's database; see the module docstring for the rules.

    ``staff`` are the staff ids owners are checked against on import (None: unchecked);
    ``default_region`` reads national numbers in imports (``numbers.default_region``).
    The ``Crm`` methods raise CrmUnavailable when the database is down; the API methods
    (``import_contacts``, ``list_tasks``, ``get_task``, ``close_task``) StoreUnavailable.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        staff: Collection[str] | None = None,
        default_region: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(engine, clock=clock)
        applied = table_of(CrmApplied)
        self._insert_applied = self._insert(applied).on_conflict_do_nothing(
            index_elements=[applied.c.key]).returning(applied.c.key)
        self._staff = frozenset(staff) if staff is not None else None
        self._region = default_region or "ZZ"

    # ----------------------------------------------------------------- the Crm port

    async def _crm_run(self, fn: Callable[[Connection], _T], *, write: bool) -> _T:
        """One transaction of the ``Crm`` port (StoreUnavailable is CrmUnavailable)."""
        try:
            return await self._run(fn, write=write)
        except StoreUnavailable as exc:
            raise CrmUnavailable(f"built-in CRM: {exc}") from exc

    async def find_contact(self, phone: str) -> Contact | None:
        """The contact of an E.164 number, or None."""
        row = await self._crm_run(
            lambda conn: conn.execute(_FIND_CONTACT, {"b_phone": phone}).mappings().first(),
            write=False)
        if row is None:
            return None
        return Contact(
            phone=row["phone"],
            name=row["name"],
            owner=row["owner"],
            crm_ref=row["crm_ref"],
            source=row["source"],
        )

    async def missed_call(self, missed: MissedCall, key: str) -> None:
        """Contact (when new) and the number's open task, once per ``key``."""
        now = self._clock()
        await self._crm_run(lambda conn: self._missed_call(conn, missed, key, now), write=True)

    def _missed_call(self, conn: Connection, missed: MissedCall, key: str,
                     now: datetime) -> None:
        if not self._first_time(conn, key, now):
            return
        if missed.phone.startswith("+"):
            contact = self._insert(ContactRow).values(
                phone=missed.phone,
                name="",
                owner=missed.responsible,
                source=missed.source,
                created_at=now,
                updated_at=now,
            )
            conn.execute(
                contact.on_conflict_do_update(
                    index_elements=[ContactRow.phone],
                    set_={
                        "owner": func.coalesce(ContactRow.owner, contact.excluded.owner),
                        "updated_at": now,
                    },
                )
            )
        task = self._insert(TaskRow).values(
            phone=missed.phone,
            responsible=missed.responsible,
            due_at=missed.due_at,
            status=TaskStatus.OPEN.value,
            misses=1,
            last_call_id=missed.call_id,
            created_at=missed.at,
            last_missed_at=missed.at,
        )
        new = task.excluded
        later = new.last_missed_at >= TaskRow.last_missed_at
        task_id = (
            conn.execute(
                task.on_conflict_do_update(
                    index_elements=[TaskRow.phone],
                    index_where=_OPEN_ONLY,
                    set_={
                        "misses": TaskRow.misses + 1,
                        "responsible": func.coalesce(TaskRow.responsible, new.responsible),
                        "due_at": case(
                            (new.due_at < TaskRow.due_at, new.due_at), else_=TaskRow.due_at
                        ),
                        "created_at": case(
                            (new.created_at < TaskRow.created_at, new.created_at),
                            else_=TaskRow.created_at,
                        ),
                        "last_call_id": case(
                            (later, new.last_call_id), else_=TaskRow.last_call_id
                        ),
                        "last_missed_at": case(
                            (later, new.last_missed_at), else_=TaskRow.last_missed_at
                        ),
                    },
                ).returning(TaskRow.id)
            )
        ).scalar_one()
        if missed.phone.startswith("+"):
            self._close_if_already_talked(conn, task_id, missed)

    def _first_time(self, conn: Connection, key: str, now: datetime) -> bool:
        inserted = conn.execute(self._insert_applied, {"key": key, "applied_at": now})
        return inserted.first() is not None

    def _close_if_already_talked(
        self, conn: Connection, task_id: int, missed: MissedCall
    ) -> None:
        talk = (
            conn.execute(
                select(Call.answered_at, Call.answered_by)
                .where(
                    or_(Call.caller == missed.phone, Call.dialed == missed.phone),
                    Call.answered_by.is_not(None),  # a manager, not a prompt
                    Call.answered_at > missed.at,
                )
                .order_by(Call.answered_at)
                .limit(1)
            )
        ).first()
        if talk is not None:
            self._close(conn, task_id, talk.answered_at, talk.answered_by, delay=True)

    def _close(
        self, conn: Connection, task_id: int, at: datetime, by: str | None, *, delay: bool
    ) -> None:
        created = (
            conn.execute(select(TaskRow.created_at).where(TaskRow.id == task_id))
        ).scalar_one()
        conn.execute(
            update(TaskRow)
            .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.OPEN.value)
            .values(
                status=TaskStatus.DONE.value,
                closed_at=at,
                closed_by=by,
                callback_delay_s=max(0.0, (at - created).total_seconds()) if delay else None,
            )
        )

    async def called_back(
        self, phone: str, call_id: str, by: str | None, at: datetime, key: str
    ) -> None:
        """Close the number's open task (if any, and if it was missed before ``at``)."""
        now = self._clock()

        def called_back(conn: Connection) -> None:
            if not self._first_time(conn, key, now):
                return
            task = conn.execute(_OPEN_TASK, {"b_phone": phone}).first()
            if task is not None and task.created_at <= at:
                self._close(conn, task.id, at, by, delay=True)

        await self._crm_run(called_back, write=True)

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None:
        """Nothing to do: the calls table is the built-in CRM's call log."""

    async def screen_pop(self, event: Mapping[str, object]) -> None:
        """Nothing to do: the built-in CRM has no widget."""

    # ----------------------------------------------------------------- tasks (API)

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        responsible: str | None = None,
        phone: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Task]:
        """Tasks, newest first, filtered; ``before`` is the last task id of the previous
        page (an id that is not a number gives an empty page)."""
        if limit <= 0:
            return []
        stmt = select(TaskRow)
        if status is not None:
            stmt = stmt.where(TaskRow.status == status.value)
        if responsible is not None:
            stmt = stmt.where(TaskRow.responsible == responsible)
        if phone is not None:
            stmt = stmt.where(TaskRow.phone == phone)
        if before is not None:
            cursor = _task_key(before)
            if cursor is None:
                return []
            stmt = stmt.where(TaskRow.id < cursor)
        stmt = stmt.order_by(TaskRow.id.desc()).limit(limit)
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_task(r) for r in rows]

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""
        key = _task_key(task_id)
        if key is None:
            return None
        async with self._tx(write=False) as conn:
            row = (
                (await conn.execute(select(TaskRow).where(TaskRow.id == key)))
                .mappings()
                .first()
            )
        return _task(row) if row is not None else None

    async def close_task(self, task_id: str, by: str) -> Task | None:
        """Close a task by hand (``by``: who, e.g. the API token's name); no call-back delay.

        Returns the task as it is now (a closed task stays as it was); None when unknown.
        """
        key = _task_key(task_id)
        if key is None:
            return None
        async with self._tx(write=True) as conn:
            await conn.execute(
                update(TaskRow)
                .where(TaskRow.id == key, TaskRow.status == TaskStatus.OPEN.value)
                .values(status=TaskStatus.DONE.value, closed_at=self._clock(), closed_by=by)
            )
            row = (
                (await conn.execute(select(TaskRow).where(TaskRow.id == key)))
                .mappings()
                .first()
            )
        return _task(row) if row is not None else None

    # ----------------------------------------------------------------- import (API)

    async def import_contacts(
        self, rows: str | Sequence[Mapping[str, Any]], *, dry_run: bool = False
    ) -> ImportReport:
        """Create or update contacts from CSV text (a header row naming the columns ``phone``,
        ``name``, ``owner``, ``crm_ref``; comma, semicolon or tab separated), JSON text (a
        list of objects with those keys) or such a list already parsed.

        Valid records are written in one transaction: a new number is created (source
        ``import``), a known one gets the non-empty values given; invalid records are
        skipped and each is reported with its record number, field and reason. A header
        or shape problem refuses the whole file (``row`` 0). ``dry_run`` only validates.
        """
        records, errors, total = _records(rows)
        if errors and errors[0].row == 0:  # the file's shape: nothing is imported
            return ImportReport(total=total, errors=tuple(errors), dry_run=dry_run)
        valid: list[_ImportRow] = []
        seen: dict[str, int] = {}
        for done, (number, record) in enumerate(records, start=1):
            parsed = self._validate(number, record, seen, errors)
            if parsed is not None:
                valid.append(parsed)
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a big file must not hold up the calls
        created = updated = 0
        if dry_run:
            known = await self._known({r.phone for r in valid}) if valid else set()
            created = sum(1 for r in valid if r.phone not in known)
            updated = len(valid) - created
        elif valid:
            created, updated = await self._write(valid)
        return ImportReport(
            total=total,
            created=created,
            updated=updated,
            errors=tuple(sorted(errors, key=lambda e: e.row)),
            dry_run=dry_run,
        )

    def _validate(
        self,
        number: int,
        record: Mapping[str, Any],
        seen: dict[str, int],
        errors: list[ImportRowError],
    ) -> _ImportRow | None:
        before = len(errors)

        def problem(name: str, message: str) -> None:
            errors.append(ImportRowError(number, name, message))

        unknown = sorted(str(k) for k in record if k not in IMPORT_FIELDS)
        if unknown:
            problem(unknown[0], f"unknown field(s) {', '.join(unknown)}; the fields are "
                               f"{', '.join(IMPORT_FIELDS)}")
        values: dict[str, str | None] = {}
        for name in IMPORT_FIELDS:
            value = record.get(name)
            if value is None:
                values[name] = None
            elif isinstance(value, str) and _UNSTORABLE.search(value):
                problem(name, "contains a NUL character or a lone surrogate, which cannot be "
                              "stored")
                values[name] = None
            elif isinstance(value, str | int) and not isinstance(value, bool):
                values[name] = str(value).strip() or None
            else:
                problem(name, f"expected text, got {type(value).__name__}")
                values[name] = None
        raw = values["phone"]
        phone = to_e164(raw, self._region) if raw else None
        if raw is None:
            problem("phone", "missing phone number")
        elif phone is None:
            problem("phone", f"'{raw}' is not a valid phone number; write it as "
                             f"+74951234567 (+, country code, number)")
        elif phone in seen:
            problem("phone", f"{phone} is already in row {seen[phone]}; give each number once")
        owner = values["owner"]
        if owner is not None and self._staff is not None and owner not in self._staff:
            staff = ", ".join(sorted(self._staff)) or "nobody"
            problem("owner", f"unknown manager '{owner}'; staff has: {staff}")
        label = values["name"]
        if label is not None and len(label) > _MAX_NAME:
            problem("name", f"longer than {_MAX_NAME} characters")
        ref = values["crm_ref"]
        if ref is not None and len(ref) > _MAX_REF:
            problem("crm_ref", f"longer than {_MAX_REF} characters")
        if len(errors) > before or phone is None:
            return None
        seen[phone] = number
        return _ImportRow(number, phone, label, owner, ref)

    async def _known(self, phones: set[str]) -> set[str]:
        known: set[str] = set()
        async with self._tx(write=False) as conn:
            for chunk in _chunks(sorted(phones)):
                result = await conn.execute(
                    select(ContactRow.phone).where(ContactRow.phone.in_(chunk))
                )
                known.update(result.scalars())
        return known

    async def _write(self, rows: list[_ImportRow]) -> tuple[int, int]:
        now = self._clock()
        created = updated = 0
        async with self._tx(write=True) as conn:
            known: set[str] = set()
            for chunk in _chunks([r.phone for r in rows]):
                result = await conn.execute(
                    select(ContactRow.phone).where(ContactRow.phone.in_(chunk))
                )
                known.update(result.scalars())
            new = [
                {
                    "phone": r.phone,
                    "name": r.name or "",
                    "owner": r.owner,
                    "crm_ref": r.crm_ref,
                    "source": "import",
                    "created_at": now,
                    "updated_at": now,
                }
                for r in rows
                if r.phone not in known
            ]
            if new:
                await conn.execute(self._insert(ContactRow), new)
                created = len(new)
            for r in rows:
                if r.phone not in known:
                    continue
                changes: dict[str, Any] = {"updated_at": now}
                if r.name is not None:
                    changes["name"] = r.name
                if r.owner is not None:
                    changes["owner"] = r.owner
                if r.crm_ref is not None:
                    changes["crm_ref"] = r.crm_ref
                await conn.execute(
                    update(ContactRow).where(ContactRow.phone == r.phone).values(**changes)
                )
                updated += 1
        return created, updated


def _task_key(task_id: str) -> int | None:
    """A task id as the database's key; None for anything that cannot be one."""
    if task_id.isascii() and task_id.isdigit() and len(task_id) <= 18:
        return int(task_id)
    return None


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


_Records = tuple[list[tuple[int, Mapping[str, Any]]], list[ImportRowError], int]


def _records(rows: str | Sequence[Mapping[str, Any]]) -> _Records:
    """Numbered records of an import, the problems of its shape, and how many records."""
    if isinstance(rows, str):
        stripped = rows.lstrip("\ufeff").strip()
        if stripped.startswith(("[", "{")):
            try:
                parsed = json.loads(stripped)
            except json.JSONDecodeError as exc:
                return [], [ImportRowError(0, "", f"not valid JSON: {exc.msg} at line "
                                                  f"{exc.lineno}, column {exc.colno}")], 0
            if not isinstance(parsed, list):
                return [], [ImportRowError(0, "", "expected a JSON list of contacts")], 0
            return _json_records(parsed)
        return _csv_records(stripped)
    return _json_records(list(rows))


def _json_records(items: list[Any]) -> _Records:
    records: list[tuple[int, Mapping[str, Any]]] = []
    errors: list[ImportRowError] = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, Mapping):
            records.append((number, item))
        else:
            errors.append(ImportRowError(number, "", "expected an object with phone, name, "
                                                     "owner, crm_ref"))
    return records, errors, len(items)


def _csv_records(text_: str) -> _Records:
    if not text_:
        return [], [ImportRowError(0, "", "the file is empty; the first line names the "
                                          "columns: phone,name,owner,crm_ref")], 0
    header_line = text_.splitlines()[0]
    delimiter = max(",;\t", key=header_line.count)
    # newline="": lines end in \n, \r\n or \r (old Mac exports); quoted newlines are kept.
    reader = csv.reader(io.StringIO(text_, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except csv.Error as exc:
        return [], [ImportRowError(0, "header", f"the header is not readable as CSV: {exc}")], 0
    unknown = [h for h in header if h not in IMPORT_FIELDS]
    if unknown or "phone" not in header or len(set(header)) != len(header):
        return [], [ImportRowError(0, "header", f"the header names the columns "
                                                f"{', '.join(header)}; expected phone and "
                                                f"any of name, owner, crm_ref, each once")], 0
    records: list[tuple[int, Mapping[str, Any]]] = []
    errors: list[ImportRowError] = []
    number = 0
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines
            number += 1
            if len(cells) != len(header):
                errors.append(ImportRowError(number, "", f"{len(cells)} columns, the header "
                                                         f"has {len(header)}"))
                continue
            records.append((number, dict(zip(header, cells, strict=True))))
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): refuse the file
        return [], [ImportRowError(0, "", f"not readable as CSV after data row {number}: "
                                          f"{exc}")], number
    return records, errors, number


def _task(row: RowMapping) -> Task:
    return Task(
        task_id=str(row["id"]),
        phone=row["phone"],
        responsible=row["responsible"],
        due_at=row["due_at"],
        status=TaskStatus(row["status"]),
        created_at=row["created_at"],
        misses=row["misses"],
        last_call_id=row["last_call_id"],
        closed_at=row["closed_at"],
        crm_ref=row["crm_ref"],
        closed_by=row["closed_by"],
        callback_delay_s=row["callback_delay_s"],
    )
