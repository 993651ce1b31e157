"""Routing plans and the facts they are decided from: plain data, no behaviour.

``routing.decide(call, facts, config, now) -> Plan`` is pure: it reads only these values.
The executor (``adapters/stasis.py``) runs a plan's steps in order on ARI:

* ``Ring``: ring ``targets`` (all at once, or one after another for ``timeout_s`` each);
  the first to answer is bridged with the caller and the plan ends there.
* ``Play``: play a prompt to the caller (answering the call first).
* ``Voicemail``: take a message into ``box`` (answers; ends the plan).
* ``Reject``: refuse the call (``busy``/``congestion``) without answering; ends the plan.

When every step ran and nobody answered, the call is ``unanswered_outcome`` (missed,
after_hours, rejected) and, unless rejected, a missed-call task goes to ``responsible``.
A plan with ``fallback`` set hands the call to the dialplan fallback
(``asterisk.fallback_context``) when its steps are done, instead of hanging up: so far only
an unknown line's plan, which has no steps (pbxbrain has no rules for that number).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from pbxbrain.domain.model import CallOutcome


class RingMode(enum.StrEnum):
    """How the targets of one Ring step are rung."""

    ALL = "all"  # every target at once; the first to answer wins
    SEQUENTIAL = "sequential"  # one after another, ``timeout_s`` each


@dataclass(frozen=True, slots=True)
class Target:
    """Something to ring: a manager's desk phone, or his mobile through the trunk.

    ``endpoint`` is a complete Asterisk dial string (``PJSIP/101`` or
    ``PJSIP/+79161234567@pstn``); it is built only from validated config values.
    """

    staff_id: str
    endpoint: str
    kind: str = "desk"  # desk | mobile


@dataclass(frozen=True, slots=True)
class Ring:
    """Ring targets; ``why`` says which rule put them here (for ``pbxbrain route``)."""

    targets: tuple[Target, ...]
    mode: RingMode
    timeout_s: int
    why: str = ""
    caller_id: str | None = None  # shown to the targets (outbound: the department's number)


@dataclass(frozen=True, slots=True)
class Play:
    """Play a prompt (an Asterisk sound name such as ``after-hours``) to the caller."""

    prompt: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class Voicemail:
    """Take a message for a department or a manager (``box`` is its id)."""

    box: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the call without answering it."""

    cause: str = "busy"  # busy | congestion
    why: str = ""


Step = Ring | Play | Voicemail | Reject


@dataclass(frozen=True, slots=True)
class Skip:
    """Somebody the plan left out, and why (busy, unregistered, not in the department)."""

    staff_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one call, and why."""

    steps: tuple[Step, ...]
    line: str | None  # the matched line (E.164 DID) or None
    source: str | None  # the line's ad source
    rule: str  # the rule that decided: "blacklist", "after_hours", "route", "short:<id>", ...
    record: bool = True
    responsible: str | None = None  # staff id who gets the missed-call task
    unanswered_outcome: CallOutcome = CallOutcome.MISSED
    skipped: tuple[Skip, ...] = ()
    notes: tuple[str, ...] = ()  # human-readable explanation, in order
    assign_sticky: str | None = None  # remember this manager for the caller (sticky)
    manager: str | None = None  # outbound: the manager who placed the call
    cursor_used: Mapping[str, int] = field(default_factory=dict)  # department -> position
    fallback: bool = False  # hand the call to the dialplan fallback when the steps are done


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything ``decide`` needs beyond the config, gathered by the service beforehand.

    * ``owner``: the caller's responsible manager in the CRM (staff id), None if unknown;
      ``crm_ok`` is False when the CRM could not be asked in time (the route then goes on
      without the owner, and the plan notes it).
    * ``busy``: managers on a call or being rung right now; ``offline``: managers whose
      phone is unregistered or unreachable.
    * ``cursors``: the round-robin position of each department (from the database).
    * ``sticky``: the manager this caller was assigned before (sticky strategy);
      ``sticky_known`` is False when that could not be read in time: the call is routed
      without him, and nobody new is assigned (that would replace him for good).
    """

    owner: str | None = None
    crm_ok: bool = True
    busy: frozenset[str] = frozenset()
    offline: frozenset[str] = frozenset()
    cursors: Mapping[str, int] = field(default_factory=dict)
    sticky: str | None = None
    sticky_known: bool = True
