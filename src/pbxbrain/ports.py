"""The ports: what the service needs from the outside world, as Protocols.

Concrete adapters live in ``pbxbrain.adapters``; unit tests use small hand-written fakes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Contact,
    DeliveryFailure,
    ImportReport,
    InboundCall,
    JournalEntry,
    MissedCall,
    OriginateRequest,
    OutboxMessage,
    PendingDelivery,
    RecordingInfo,
    Task,
    TaskStatus,
)


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the operation; the caller may retry."""


class CallStore(Protocol):
    """Durable memory of calls: the calls table, the journal, recordings, outbox, cursors."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the database does not answer."""

    def batch(self) -> AbstractAsyncContextManager[None]:
        """The writes made inside this block share one transaction (one commit)."""

    async def open_call(self, call: InboundCall, *, line: str | None = None,
                        source: str | None = None) -> None:
        """Create the call row and its ``entered`` journal entry in one transaction.

        Idempotent on ``call.call_id``: opening the same call twice keeps the first row.
        """

    async def append(self, entry: JournalEntry) -> None:
        """Add one journal entry to an open call."""

    async def append_many(self, entries: Sequence[JournalEntry]) -> None:
        """Add journal entries (of any calls) in one statement; LookupError when a call
        is unknown (then none is added)."""

    async def mark_answered(self, call_id: str, at: datetime, by: str | None) -> None:
        """Record who answered and when (first answer wins; later calls are ignored)."""

    async def close_call(
        self,
        call_id: str,
        outcome: CallOutcome,
        ended_at: datetime,
        *,
        outbox: Sequence[OutboxMessage] = (),
        data: dict[str, object] | None = None,
    ) -> None:
        """Set the outcome and end time, journal ``ended`` and queue ``outbox`` atomically.

        Closing a call that is already closed changes nothing (no second outbox row).
        """

    async def get_call(self, call_id: str) -> CallSummary | None:
        """One call, or None."""

    async def journal(self, call_id: str) -> list[JournalEntry]:
        """A call's journal, oldest first."""

    async def list_calls(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        number: str | None = None,
        outcome: CallOutcome | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[CallSummary]:
        """Calls, newest first, filtered; ``before_id`` pages on."""

    async def open_calls(self) -> list[CallSummary]:
        """Calls with no outcome yet (to re-sync after a restart)."""

    async def add_recording(self, rec: RecordingInfo) -> None:
        """Keep a recording's metadata."""

    async def finish_recording(self, recording_id: str, duration_s: float | None,
                               size_bytes: int | None) -> None:
        """Set a finished recording's duration and size."""

    async def recordings(self, call_id: str) -> list[RecordingInfo]:
        """A call's recordings."""

    async def advance_cursor(self, group: str, size: int) -> int:
        """Atomically return the group's round-robin position in ``[0, size)`` and advance it.

        Survives restarts; safe for concurrent callers (several nodes on one PostgreSQL).
        """

    async def manager_of(self, phone: str) -> str | None:
        """The manager the sticky strategy assigned to caller ``phone`` (E.164), if any."""

    async def remember_manager(self, phone: str, staff_id: str, call_id: str,
                               at: datetime) -> None:
        """Make ``staff_id`` caller ``phone``'s sticky manager (``call_id`` assigned him)."""


class PhoneStates(Protocol):
    """Who is free: Asterisk's phone states joined with pbxbrain's own reservations."""

    async def snapshot(self) -> tuple[frozenset[str], frozenset[str]]:
        """(busy, offline) staff ids right now."""

    def reserve(self, staff_id: str, call_id: str) -> bool:
        """Hold a manager for a call; False when another call holds him."""

    def release(self, staff_id: str, call_id: str) -> None:
        """Let a manager go."""

    def release_all(self, call_id: str) -> None:
        """Let every manager held by a call go."""

    def changed(self, channel_id: str) -> None:
        """A channel ended: the phone it was on may be free now."""


class ChannelRecorder(Protocol):
    """Asterisk's MixMonitor (through AMI): records a channel both ways into a file.

    Errors are raised as ``pbxbrain.adapters.ami.AmiError``."""

    @property
    def ready(self) -> bool:
        """Connected now; when not, calls are recorded another way."""

    async def mix_monitor(self, channel: str, path: str) -> None:
        """Start recording ``channel`` (name or id) into ``path`` on Asterisk's side."""

    async def stop_mix_monitor(self, channel: str) -> None:
        """Stop recording ``channel``; the file is complete when this returns."""


class CrmUnavailable(Exception):
    """The CRM did not answer, answered an error, or answered nonsense; retry later."""


class CrmRejected(CrmUnavailable):
    """The CRM refused this very message for good (e.g. HTTP 400): retrying it as it is
    cannot help. The outbox marks it failed at once (visible, retryable by hand)."""


class Crm(Protocol):
    """One CRM behind one port: built-in (pbxbrain's DB), webhook, Bitrix24.

    Every method is idempotent where the outbox may call it twice (``key``).
    """

    async def find_contact(self, phone: str) -> Contact | None:
        """The contact and its owner for an E.164 number, or None. Raises CrmUnavailable."""

    async def missed_call(self, missed: MissedCall, key: str) -> None:
        """Make sure a contact exists and an open task for ``missed.responsible`` holds
        this call (create it, or update the number's open task)."""

    async def called_back(self, phone: str, call_id: str, by: str | None, at: datetime,
                          key: str) -> None:
        """A manager talked to ``phone``: close its open task (if the CRM supports it)."""

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None:
        """Record a finished call (with a link to its recording) in the CRM."""

    async def screen_pop(self, event: Mapping[str, object]) -> None:
        """A manager's phone started ringing: tell the CRM widget (best effort, no retry)."""


class OutboxStore(Protocol):
    """The outbox as its delivery workers see it: claim due rows, mark what happened.

    Several pbxbrain nodes may share one database: a claimed row is leased to one node
    until ``lease_s`` has passed, so two nodes never deliver the same row at once, and a
    node that died mid-delivery only delays its rows by the lease.
    """

    async def claim_deliveries(self, node: str, now: datetime, limit: int = 20,
                               lease_s: float = 120.0) -> list[PendingDelivery]:
        """Lease up to ``limit`` due rows (not delivered, not failed for good, not leased
        to anyone at ``now``) to ``node``; oldest due first."""

    async def delivered(self, delivery_ids: Collection[int], at: datetime) -> None:
        """Mark rows delivered (and release their leases)."""

    async def delivery_failed(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        """Count a failed attempt, keep the error, schedule the next attempt, release."""

    async def delivery_rejected(self, delivery_id: int, error: str, at: datetime) -> None:
        """Count a failed attempt and mark the row failed for good (no automatic retry)."""

    async def release_claims(self, node: str) -> int:
        """Release every lease held by ``node`` (at start: rows a crashed run had taken)."""

    async def next_due_at(self) -> datetime | None:
        """When the next row becomes claimable, or None when nothing waits."""

    async def failing(self) -> tuple[int, str]:
        """How many undelivered rows have failed at least once, and the latest error."""

    async def failed_deliveries(self, limit: int = 100) -> list[DeliveryFailure]:
        """Undelivered rows that failed at least once, most recently failed first."""

    async def retry_now(self, delivery_id: int) -> bool:
        """Make an undelivered row due now (also one failed for good); False when there is
        no such undelivered row."""


class OutboxAdmin(Protocol):
    """The outbox as the HTTP API shows it: failed deliveries, and retrying one by hand
    (``SqlOutbox``). Raises StoreUnavailable when the database is down."""

    async def failed_deliveries(self, limit: int = 100, *,
                                before_id: int | None = None) -> list[DeliveryFailure]:
        """Undelivered rows that failed at least once (retrying, or failed for good), newest
        first; ``before_id`` is the last id of the previous page."""

    async def retry_now(self, delivery_id: int) -> bool:
        """Make an undelivered row due now (also one failed for good); False when there is
        no such undelivered row."""


class ContactBook(Protocol):
    """The built-in CRM's contacts and missed-call tasks, as the HTTP API manages them
    (``BuiltinCrm``). Every method raises StoreUnavailable when the database is down."""

    async def import_contacts(self, rows: str | Sequence[Mapping[str, Any]], *,
                              dry_run: bool = False) -> ImportReport:
        """Create or update contacts from CSV text (a header row naming ``phone`` and any of
        ``name``, ``owner``, ``crm_ref``) or a list of such records. Invalid records are
        reported (record number, field, reason) and skipped, the others written in one
        transaction; a file of the wrong shape is refused whole (errors on row 0).
        ``dry_run`` only validates."""

    async def list_tasks(self, *, status: TaskStatus | None = None,
                         responsible: str | None = None, phone: str | None = None,
                         limit: int = 100, before: str | None = None) -> list[Task]:
        """Tasks, newest first, filtered; ``before`` is the last task id of the previous
        page."""

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

    async def close_task(self, task_id: str, by: str) -> Task | None:
        """Close a task by hand; a closed task stays as it was. The task as it is now, or
        None when unknown."""


class ClickToCallUnavailable(Exception):
    """Click-to-call cannot start now (Asterisk unreachable, shutting down); retry later."""


class ClickToCallRefused(Exception):
    """Click-to-call will not start this call (e.g. the manager's phone is offline); the
    message says why, in words for the API client."""


class ClickToCall(Protocol):
    """Click-to-call: ring the manager, then the client, bridge, record, journal.

    The HTTP API validates and authorises everything before calling ``start``.
    """

    async def start(self, request: OriginateRequest) -> str:
        """Start the call and return its call id at once; the call goes on in the
        background. Raises ClickToCallUnavailable or ClickToCallRefused."""

    def active_for(self, staff_id: str) -> int:
        """How many click-to-calls of ``staff_id`` are in progress right now."""


class RecordingIndex(Protocol):
    """Find a recording's metadata by its id (``SqlCallStore`` has it)."""

    async def get_recording(self, recording_id: str) -> RecordingInfo | None:
        """One recording, or None."""


@dataclass(frozen=True, slots=True)
class LookupResult:
    """A contact lookup on the call path.

    ``answered`` is False when the CRM did not answer within the deadline or failed: the
    contact is then unknown (not "absent"), and the router notes it.
    """

    contact: Contact | None
    answered: bool
    cached: bool = False

    @property
    def owner(self) -> str | None:
        """The contact's owner (staff id), when known."""
        return self.contact.owner if self.contact is not None else None


class ContactLookup(Protocol):
    """The CRM lookup on the call path: bounded by a deadline, never raises."""

    async def lookup(self, phone: str) -> LookupResult:
        """The caller's contact (and owner), or why it is unknown."""
