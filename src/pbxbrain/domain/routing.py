"""Routing: one inbound call plus the facts gathered about it become a Plan. Pure.

``decide(call, facts, config, now)`` reads nothing but its arguments: no I/O, no clock, no
randomness. The rules, applied in this order (the first that decides wins):

1. Blacklist. A caller whose E.164 number starts with a ``blacklist`` entry (a full
   number is its own prefix) gets ``Reject(busy)``: rule ``blacklist``, not recorded, no
   missed-call task (outcome ``rejected``).
2. The line. ``dialed`` is read as E.164 (``74951234567`` and ``84951234567`` are
   ``+74951234567``) and looked up in ``lines``. An internal call may dial a short
   number instead, looked up first: a manager's rings that manager (desk phone, else
   mobile), a department's goes through the department's strategy (rule
   ``short:<id>``; recorded; no missed-call task). A number that is neither gets a plan
   with no steps and ``fallback=True``: rule ``unknown_line``, not recorded by pbxbrain,
   no responsible, outcome ``missed``; the executor hands the call to the dialplan
   fallback (which rings the fallback group and records it there).
3. Working hours. A line whose schedule is closed at ``now`` (holidays all day) plays
   ``after_hours.prompt`` and takes a message in ``after_hours.voicemail``, each if
   given (neither: the call is hung up). Rule ``after_hours``, outcome ``after_hours``.
4. The route, step by step, each step adding at most one Ring (or Play, Voicemail):
   * owner: the CRM owner's phone (his department's ``ring_seconds``), then his
     ``then`` chain: ``mobile`` (through the trunk), ``department`` (his department by
     its strategy, without him), ``head``. Unknown owner, or CRM not answering: nothing.
   * department: by strategy. round_robin: free members from the cursor on, one by one;
     ring_all: free members at once; sequential: free members in listed order; sticky:
     the caller's manager first (when free), then round robin of the rest, and when the
     caller has no manager yet, the first pick becomes his (``assign_sticky``; not when
     his manager could not be read, ``sticky_known``); fixed:
     the first free member in listed order, alone.
   * manager: that manager. ring_all: those managers at once. region: the department of
     the caller's region (the longest matching prefix; else the region listing the
     caller's country, as phonenumbers assigns it), else ``default``.
   * voicemail: take a message; the route ends there.
   Nobody busy is rung (on any phone); nobody offline is rung on the desk phone (a
   mobile is never offline); no phone is rung twice in one plan, so a manager is rung
   once, except the owner whose ``mobile`` fallback is his second phone. Everyone left
   out is in ``skipped`` with the reason. When a step finds only busy managers, busy
   policy ``next`` goes on at once, ``prompt`` plays the line's ``busy_prompt`` (once)
   and goes on.
5. Responsible for the missed-call task (route and after-hours plans): the owner when
   known (from the CRM, in staff, even when busy); else the caller's sticky manager or the
   first round-robin pick; else, after hours, the voicemail box: its manager, or its
   department's head (first member when headless); else the head (first member) of the
   first department of the route (department and region steps); else a route's voicemail
   box likewise; else None. Internal calls and unknown lines: None.
0. Outbound calls from a desk phone (checked before everything else): the phone's caller
   number must be a manager's short number, and the dialed number must pass
   ``domain.dialing`` (valid, allowed by ``numbers.dial_allowed``, not premium rate);
   else ``Reject(congestion)``, rule ``outbound_refused``, outcome ``rejected``. Allowed:
   one Ring of the client through the trunk, shown the caller ID of the manager's
   department (or the department he heads), for ``click_to_call.client_ring_seconds``;
   rule ``outbound``, recorded, no missed-call task; unanswered: ``no_answer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from pbxbrain.config import (
    Config,
    DepartmentStep,
    Line,
    ManagerStep,
    OwnerStep,
    RegionStep,
    RingAllStep,
    RouteStep,
    VoicemailStep,
)
from pbxbrain.domain.dialing import DialRefused, validate_dial_number
from pbxbrain.domain.model import CallOutcome, Direction, InboundCall
from pbxbrain.domain.phone import region_of, to_e164
from pbxbrain.domain.plan import (
    Facts,
    Plan,
    Play,
    Reject,
    Ring,
    RingMode,
    Skip,
    Step,
    Target,
    Voicemail,
)
from pbxbrain.domain.schedule import is_open_local, local_time

__all__ = [
    "ALREADY_RUNG",
    "BUSY",
    "DEFAULT_RING_SECONDS",
    "OFFLINE",
    "cursor_groups",
    "decide",
    "explain",
    "find_line",
    "plan_to_journal",
    "plan_to_json",
    "step_to_json",
]

"""The sound played once when busy policy is ``prompt`` and a step finds only busy people."""
DEFAULT_RING_SECONDS = 20
"""Ring time of a manager in no department (the config's default ``ring_seconds``)."""
BUSY = "busy"
OFFLINE = "offline"
ALREADY_RUNG = "already rung in this plan"

_CURSOR_STRATEGIES = frozenset({"round_robin", "sticky"})
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# --------------------------------------------------------------------------------------------
# Looking things up
# --------------------------------------------------------------------------------------------


def _region(config: Config) -> str:
    # "ZZ" (unknown region): only international forms (+7..., 7...) can be read.
    return config.numbers.default_region or "ZZ"


@dataclass(frozen=True, slots=True)
class _Members:
    """A department's members as the walk rings them: their targets in listed order, and
    the set of their staff ids (None when somebody is listed twice)."""

    targets: tuple[Target, ...]
    ids: frozenset[str] | None

    @classmethod
    def of(cls, targets: tuple[Target, ...]) -> _Members:
        ids = frozenset(target.staff_id for target in targets)
        return cls(targets, ids if len(ids) == len(targets) else None)


@dataclass(frozen=True, slots=True)
class _Index:
    """What every decision derives from a Config, derived once per Config (it is frozen).

    Only lookups: each answers exactly what the plain reading of ``config`` would (the
    functions above and below, which ``cursor_groups`` and the outbound rule still use).
    """

    region: str
    targets: Mapping[str, Target]  # staff id -> desk phone, else mobile
    mobiles: Mapping[str, Target]  # staff id -> mobile through the trunk (when he has one)
    homes: Mapping[str, str]  # staff id -> ``_home_department``
    ring_seconds: Mapping[str, int]  # staff id -> his home department's (absent: the default)
    shorts: Mapping[str, tuple[Literal["staff", "department"], str]]  # ``_short``
    members: Mapping[str, _Members]  # department id -> its members
    deskless: frozenset[str]  # staff ids rung on their mobile, having no desk phone
    line_notes: Mapping[str, str]  # line number -> ``_line_note``

    @classmethod
    def build(cls, config: Config) -> _Index:
        trunk = config.asterisk.trunk
        mobiles = {staff_id: Target(staff_id, f"PJSIP/{staff.mobile}@{trunk}", kind="mobile")
                   for staff_id, staff in config.staff.items() if staff.mobile is not None}
        targets = {staff_id: Target(staff_id, staff.phone) if staff.phone is not None
                   else mobiles[staff_id] for staff_id, staff in config.staff.items()}
        homes: dict[str, str] = {}
        for department_id, department in config.departments.items():
            if department.head is not None:
                homes.setdefault(department.head, department_id)  # the first one he heads
        for department_id, department in config.departments.items():
            for member in department.members:  # as ``Config.department_of``: the last one
                homes[member] = department_id  # membership wins over heading
        shorts: dict[str, tuple[Literal["staff", "department"], str]] = {}
        for department_id, department in reversed(list(config.departments.items())):
            if department.short is not None:
                shorts[department.short] = ("department", department_id)
        for staff_id, staff in reversed(list(config.staff.items())):  # staff, the first wins
            if staff.short is not None:
                shorts[staff.short] = ("staff", staff_id)
        # A department naming somebody not in staff (a Config built without parse_config's
        # reference checks) has no entry: ``_Walk.department`` then fails as it always did.
        members = {department_id: _Members.of(tuple(targets[member]
                                                     for member in department.members))
                   for department_id, department in config.departments.items()
                   if all(member in targets for member in department.members)}
        ring_seconds = {staff_id: config.departments[home].ring_seconds
                        for staff_id, home in homes.items() if home}
        deskless = frozenset(staff_id for staff_id, staff in config.staff.items()
                             if staff.phone is None)
        line_notes = {number: _line_note(number, line) for number, line in config.lines.items()}
        return cls(_region(config), targets, mobiles, homes, ring_seconds, shorts, members,
                   deskless, line_notes)


_INDEX_CACHE_SIZE = 8
_indexes: dict[int, tuple[Config, _Index]] = {}


def _index(config: Config) -> _Index:
    """The index of ``config``, built on first use and kept for the last few configs.

    Configs hold dicts (so they are not hashable): the cache is keyed by ``id`` and keeps
    the config itself alive, so its id cannot be reused by another object meanwhile.
    """
    entry = _indexes.get(id(config))
    if entry is not None and entry[0] is config:
        return entry[1]
    index = _Index.build(config)
    while len(_indexes) >= _INDEX_CACHE_SIZE:
        _indexes.pop(next(iter(_indexes)))
    _indexes[id(config)] = (config, index)
    return index


def find_line(dialed: str, config: Config) -> tuple[str, Line] | None:
    """The line a dialed number reaches, as (E.164 number, Line), or None."""
    number = to_e164(dialed, _region(config))
    if number is None or number not in config.lines:
        return None
    return number, config.lines[number]


def _short(dialed: str, config: Config) -> tuple[Literal["staff", "department"], str] | None:
    digits = dialed.strip()
    for staff_id, staff in config.staff.items():
        if staff.short == digits:
            return "staff", staff_id
    for department_id, department in config.departments.items():
        if department.short == digits:
            return "department", department_id
    return None


def _caller_e164(caller: str, config: Config) -> str:
    return caller if caller.startswith("+") else (to_e164(caller, _region(config)) or caller)


def _blacklisted(caller: str, config: Config) -> str | None:
    if not caller.startswith("+") or not caller.startswith(config.blacklist):
        return None
    return next((prefix for prefix in config.blacklist if caller.startswith(prefix)), None)


def _region_of(caller: str, config: Config) -> tuple[str, str, str] | None:
    """(region id, what matched, department): the longest prefix matching ``caller``, else
    the region listing the country phonenumbers assigns his number to."""
    best: tuple[str, str, str] | None = None
    for region_id, region in config.regions.items():
        for prefix in region.prefixes:
            if caller.startswith(prefix) and (best is None or len(prefix) > len(best[1])):
                best = (region_id, prefix, region.department)
    if best is not None or not caller.startswith("+"):
        return best
    country = region_of(caller)
    return next(((region_id, country, region.department)
                 for region_id, region in config.regions.items()
                 if country in region.countries), None)


def _region_department(step: RegionStep, caller: str, config: Config) -> str | None:
    found = _region_of(caller, config)
    return found[2] if found else step.region.default


def _home_department(staff_id: str, config: Config) -> str | None:
    """The department ``staff_id`` is a member of, else the first one he heads."""
    member_of = config.department_of(staff_id)
    if member_of is not None:
        return member_of
    return next((department_id for department_id, department in config.departments.items()
                 if department.head == staff_id), None)


def _lead(department_id: str, config: Config) -> str | None:
    """Who answers for a department: its head, else its first member."""
    department = config.departments[department_id]
    return department.head or next(iter(department.members), None)


def _route_departments(route: Iterable[RouteStep], caller: str, config: Config,
                       owner: str | None) -> list[str]:
    """Departments the route may ring, in route order, each once."""
    found: list[str] = []
    for step in route:
        if isinstance(step, DepartmentStep):
            found.append(step.department)
        elif isinstance(step, RegionStep):
            department = _region_department(step, caller, config)
            if department is not None:
                found.append(department)
        elif isinstance(step, OwnerStep) and owner is not None and owner in config.staff \
                and "department" in step.owner.then:
            home = _home_department(owner, config)
            if home is not None:
                found.append(home)
    return list(dict.fromkeys(found))


def cursor_groups(dialed: str, caller: str, config: Config, *,
                  owner: str | None = None) -> tuple[str, ...]:
    """Departments whose round-robin cursor ``decide`` may read for this call.

    The round_robin and sticky departments the line's route (or an internal call's
    department short number) can ring: department steps, the region step resolved for
    ``caller``, and, when ``owner`` (a staff id) is already known, the owner's department
    if the owner step falls back to it. Without ``owner`` the owner step rings no
    department, so none is returned for it.
    """
    found = find_line(dialed, config)
    if found is not None:
        names = _route_departments(found[1].route, _caller_e164(caller, config), config, owner)
    else:
        short = _short(dialed, config)
        names = [short[1]] if short is not None and short[0] == "department" else []
    return tuple(name for name in names
                 if config.departments[name].strategy in _CURSOR_STRATEGIES)


# --------------------------------------------------------------------------------------------
# The route walk
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    """What one decision has built so far (mutable, private to ``decide``)."""

    config: Config
    index: _Index
    facts: Facts
    caller: str
    busy_policy: str = "next"
    busy_prompt: str = ""
    steps: list[Step] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    _skipped_keys: set[tuple[str, str]] = field(default_factory=set)  # (staff id, reason)
    notes: list[str] = field(default_factory=list)
    rung: set[str] = field(default_factory=set)  # staff ids rung (on any phone)
    rung_mobile: set[str] = field(default_factory=set)  # staff ids rung on their mobile
    cursor_used: dict[str, int] = field(default_factory=dict)
    assign_sticky: str | None = None
    pick: str | None = None  # the caller's sticky manager or the first round-robin pick
    prompted: bool = False
    rang: bool = False  # a Ring step was added
    box: str | None = None  # the route's voicemail box; that step ends the route

    # -- people --

    def target(self, staff_id: str) -> Target:
        """The phone a manager is rung on: his desk phone, else his mobile."""
        return self.index.targets[staff_id]

    def ring_seconds(self, staff_id: str) -> int:
        """How long a manager is rung: his home department's ``ring_seconds``."""
        return self.index.ring_seconds.get(staff_id, DEFAULT_RING_SECONDS)

    def skip(self, entry: Skip) -> None:
        key = (entry.staff_id, entry.reason)
        if key not in self._skipped_keys:
            self._skipped_keys.add(key)
            self.skipped.append(entry)

    def unavailable(self, target: Target) -> str | None:
        """Why ``target`` cannot be rung now, or None."""
        staff_id = target.staff_id
        if staff_id in self.facts.busy:  # on any phone
            return BUSY
        if target.kind == "desk" and staff_id in self.facts.offline:  # a mobile never is
            return OFFLINE
        if staff_id in self.rung and (target.kind != "mobile" or staff_id in self.rung_mobile):
            return ALREADY_RUNG  # only the mobile after the desk phone is another phone
        return None

    def free(self, targets: Sequence[Target],
             ids: frozenset[str] | None = None) -> tuple[list[Target], list[Skip]]:
        """The targets that can be rung, and the others (also added to ``skipped``).

        Somebody listed twice is rung once, at the first. ``ids``, when given, are the
        targets' staff ids, a different one for each target.
        """
        busy, offline, rung = self.facts.busy, self.facts.offline, self.rung
        if (ids is not None and busy.isdisjoint(ids) and offline.isdisjoint(ids)
                and rung.isdisjoint(ids)):
            return list(targets), []  # nobody to look at one by one
        ok: list[Target] = []
        taken: set[str] = set()
        left: list[Skip] = []
        for target in targets:
            staff_id = target.staff_id
            if staff_id in taken:
                reason: str | None = ALREADY_RUNG
            elif staff_id not in busy and staff_id not in offline and staff_id not in rung:
                reason = None  # most are: no need to ask ``unavailable``
            else:
                reason = self.unavailable(target)
            if reason is None:
                ok.append(target)
                taken.add(staff_id)
            else:
                entry = Skip(staff_id, reason)
                self.skip(entry)
                left.append(entry)
        return ok, left

    # -- steps --

    def ring(self, targets: Sequence[Target], mode: RingMode, timeout_s: int, why: str,
             ids: AbstractSet[str] | None = None) -> None:
        """Add a Ring step. ``ids``, when given, are the targets' staff ids, and the targets
        are their own phones (``target``): a mobile only for those with no desk phone."""
        if len(targets) == 1:
            mode = RingMode.ALL
        self.steps.append(Ring(tuple(targets), mode, timeout_s, why))
        self.rang = True
        if ids is None:
            self.rung.update([target.staff_id for target in targets])
        else:
            self.rung |= ids
        if ids is None or not ids.isdisjoint(self.index.deskless):
            self.rung_mobile.update([target.staff_id for target in targets
                                     if target.kind == "mobile"])

    def ring_one(self, target: Target, timeout_s: int, why: str) -> Skip | None:
        """Ring ``target`` alone (``ring`` of ``free([target])``), or say why not."""
        reason = self.unavailable(target)
        if reason is not None:
            entry = Skip(target.staff_id, reason)
            self.skip(entry)
            return entry
        self.steps.append(Ring((target,), RingMode.ALL, timeout_s, why))
        self.rang = True
        self.rung.add(target.staff_id)
        if target.kind == "mobile":
            self.rung_mobile.add(target.staff_id)
        return None

    def nobody(self, who: str | None, left: Sequence[Skip]) -> None:
        """A step rang nobody: say why; the busy policy applies when somebody was busy.

        ``who`` names a group (None: the step was one manager, ``left[0]``).
        """
        busy = any(skip.reason == BUSY for skip in left)
        policy = self.busy_policy if busy else "next"
        if who is None and left:
            self.notes.append(f"{left[0].staff_id} {left[0].reason} → {policy}")
        else:
            why = ", ".join(f"{skip.staff_id} {skip.reason}" for skip in left)
            self.notes.append(f"{who}: nobody to ring ({why or 'no one'}) → {policy}")
        if policy == "prompt" and not self.prompted:
            self.steps.append(Play(self.busy_prompt, why=f"{who or left[0].staff_id} busy"))
            self.prompted = True

    def walk(self, route: Iterable[RouteStep]) -> None:
        for step in route:
            if self.box is not None:
                break
            match step:
                case OwnerStep():
                    self.owner(step)
                case DepartmentStep():
                    self.department(step.department, why=f"department {step.department}")
                case ManagerStep():
                    self.manager(step.manager, why=f"manager {step.manager}")
                case RegionStep():
                    self.region(step)
                case RingAllStep():
                    self.ring_all(step.ring_all)
                case VoicemailStep():
                    self.steps.append(Voicemail(step.voicemail, why="route"))
                    self.notes.append(f"voicemail {step.voicemail}: the route ends here")
                    self.box = step.voicemail

    def owner(self, step: OwnerStep) -> None:
        owner = self.facts.owner
        if not self.facts.crm_ok:
            self.notes.append("CRM did not answer in time; owner step skipped")
            return
        if owner is None:
            self.notes.append("no owner in CRM; owner step skipped")
            return
        if owner not in self.config.staff:
            self.notes.append(f"owner {owner} from CRM is not in staff; owner step skipped")
            return
        self.notes.append(f"owner {owner} from CRM")
        timeout = self.ring_seconds(owner)
        phone = self.target(owner)
        left = self.ring_one(phone, timeout, f"owner {owner} ({phone.kind})")
        if left is not None:
            self.nobody(None, [left])
        home = self.index.homes.get(owner)
        for fallback in step.owner.then:
            if fallback == "mobile":
                self.owner_mobile(owner, timeout)
            elif home is None:
                self.notes.append(f"{owner} is in no department: no {fallback} to fall back to")
            elif fallback == "department":
                self.department(home, why=f"owner {owner}'s department {home}",
                                exclude=owner)
            else:
                head = self.config.departments[home].head
                if head is None:
                    self.notes.append(f"department {home} has no head")
                else:
                    self.manager(head, why=f"head of {home}")

    def owner_mobile(self, owner: str, timeout: int) -> None:
        if self.config.staff[owner].mobile is None:
            self.notes.append(f"{owner} has no mobile")
            return
        left = self.ring_one(self.index.mobiles[owner], timeout, f"owner {owner} (mobile)")
        if left is not None:
            self.notes.append(f"{owner}'s mobile not rung ({left.reason})")

    def manager(self, staff_id: str, why: str) -> None:
        left = self.ring_one(self.target(staff_id), self.ring_seconds(staff_id), why)
        if left is not None:
            self.nobody(None, [left])

    def ring_all(self, staff_ids: Sequence[str]) -> None:
        free, reasons = self.free([self.target(staff_id) for staff_id in staff_ids])
        if free:
            timeout = max(self.ring_seconds(target.staff_id) for target in free)
            self.ring(free, RingMode.ALL, timeout, f"ring_all {', '.join(staff_ids)}")
        else:
            self.nobody("ring_all " + ", ".join(staff_ids), reasons)

    def region(self, step: RegionStep) -> None:
        found = _region_of(self.caller, self.config)
        if found is not None:
            region_id, prefix, department = found
            self.notes.append(f"caller {self.caller} in region {region_id} ({prefix}) → "
                              f"department {department}")
        elif step.region.default is not None:
            department = step.region.default
            self.notes.append(f"caller {self.caller} in no region → default {department}")
        else:
            self.notes.append(f"caller {self.caller} in no region and no default: region "
                              f"step skipped")
            return
        self.department(department, why=f"region → department {department}")

    def department(self, department_id: str, why: str, exclude: str | None = None) -> None:
        department = self.config.departments[department_id]
        strategy = department.strategy
        members = department.members
        if not members:
            self.notes.append(f"{why}: department {department_id} has no members")
            return
        group = self.index.members.get(department_id)
        if group is None:  # somebody not in staff: fails here, as it always did
            group = _Members.of(tuple(self.target(member) for member in members))
        # The targets in ring order, their staff ids in that order, and as a set (reordering
        # keeps the set; None when somebody is listed twice).
        order, names, ids = group.targets, members, group.ids
        sticky = start = None
        if strategy in _CURSOR_STRATEGIES:
            start = self.facts.cursors.get(department_id, 0) % len(members)
            order, names = order[start:] + order[:start], names[start:] + names[:start]
            self.cursor_used[department_id] = start
        if strategy == "sticky":
            sticky = self.facts.sticky if self.facts.sticky in members else None
            if sticky is not None:
                order = (self.target(sticky),
                         *(target for target in order if target.staff_id != sticky))
                names = tuple(target.staff_id for target in order)
                self.notes.append(f"{sticky} is this caller's manager in {department_id}")
                self.pick = self.pick or sticky
            elif self.facts.sticky is not None:
                self.notes.append(f"sticky manager {self.facts.sticky} is not in "
                                  f"{department_id} any more")
        if exclude is not None:
            if ids is None:
                order = tuple(target for target in order if target.staff_id != exclude)
            elif exclude in ids:  # listed once: cut him out
                at = names.index(exclude)
                order, ids = order[:at] + order[at + 1:], ids - {exclude}
        free, reasons = self.free(order, ids)
        if strategy == "fixed":
            free = free[:1]
        if not free:
            label = strategy if start is None else f"{strategy} from position {start}"
            self.nobody(f"{why} ({label})", reasons)
            return
        if strategy in _CURSOR_STRATEGIES:
            first = free[0].staff_id if sticky is None else next(
                (target.staff_id for target in free if target.staff_id != sticky), None)
            if first is not None:
                self.pick = self.pick or first
                if strategy == "sticky" and sticky is None and self.assign_sticky is None:
                    if self.facts.sticky_known:
                        self.assign_sticky = first
                        self.notes.append(f"{first} becomes this caller's manager in "
                                          f"{department_id}")
                    else:
                        self.notes.append(f"this caller's manager in {department_id} is "
                                          f"not known now: nobody new is assigned")
        mode = RingMode.ALL if strategy == "ring_all" else RingMode.SEQUENTIAL
        free_ids = (ids - {skip.staff_id for skip in reasons}
                    if ids is not None and strategy != "fixed" else None)
        self.ring(free, mode, department.ring_seconds, f"{why}: {strategy}", free_ids)


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------


def _known_owner(facts: Facts, config: Config) -> str | None:
    owner = facts.owner
    return owner if facts.crm_ok and owner is not None and owner in config.staff else None


def _responsible(walk: _Walk, line: Line, box: str | None,
                 *, after_hours: bool) -> tuple[str | None, str]:
    """Who gets the missed-call task (rule 5 at the top of this module), and why."""
    config = walk.config
    owner = _known_owner(walk.facts, config)
    if owner is not None:
        return owner, "the owner"
    if walk.pick is not None:
        return walk.pick, "sticky manager" if walk.pick == walk.facts.sticky \
            else "first round-robin pick"
    departments = _route_departments(line.route, walk.caller, config, None)
    boxes = [box] if box is not None else []
    for place in [*boxes, *departments] if after_hours else [*departments, *boxes]:
        if place in config.staff:
            return place, f"voicemail box {place}"
        lead = _lead(place, config)
        if lead is not None:
            what = "voicemail box" if place == box and place not in departments \
                else "department"
            return lead, f"answers for {what} {place}"
    return None, "no owner, pick or department"


def _line_note(number: str, line: Line) -> str:
    about = ", ".join(part for part in (line.name, f"source {line.source}"
                                        if line.source else None) if part)
    return f"line {number}" + (f" ({about})" if about else "")


def decide(call: InboundCall, facts: Facts, config: Config, now: datetime) -> Plan:
    """The plan for ``call``, given ``facts`` gathered for it, at ``now`` (aware UTC).

    Pure: the same arguments always give the same plan. The rules are at the top of
    this module.
    """
    if call.direction is Direction.OUTBOUND:
        return _outbound(call, config)
    index = _index(config)
    caller = _caller_e164(call.caller, config)
    found = find_line(call.dialed, config)
    number, line = found if found is not None else (None, None)
    source = line.source if line is not None else None
    notes = [index.line_notes[number]] if number is not None and line is not None else []

    banned = _blacklisted(caller, config)
    if banned is not None:
        entry = "" if banned == caller else f" (prefix {banned})"
        return Plan(steps=(Reject("busy", why=f"blacklist{entry}"),), line=number,
                    source=source, rule="blacklist", record=False, responsible=None,
                    unanswered_outcome=CallOutcome.REJECTED,
                    notes=(*notes, f"caller {caller} is blacklisted{entry}: rejected as busy"))

    walk = _Walk(config, index, facts, caller)
    short = (index.shorts.get(call.dialed.strip()) if call.direction is Direction.INTERNAL
             else None)
    if short is not None:
        kind, target = short
        walk.notes.append(f"internal call from {caller} to short number {call.dialed.strip()} "
                          f"({'manager' if kind == 'staff' else 'department'} {target})")
        if kind == "staff":
            walk.manager(target, why=f"short number of {target}")
        else:
            walk.department(target, why=f"short number of department {target}")
        walk.notes.append("internal call: no missed-call task")
        return _plan(walk, number=None, source=None, rule=f"short:{target}", responsible=None)

    if number is None or line is None:
        read = to_e164(call.dialed, _region(config))
        as_read = f" (read as {read})" if read is not None and read != call.dialed else ""
        return Plan(steps=(), line=None, source=None, rule="unknown_line", record=False,
                    responsible=None, unanswered_outcome=CallOutcome.MISSED, fallback=True,
                    notes=(f"no line for dialed number {call.dialed}{as_read}: handed to "
                           f"the dialplan fallback",))

    walk.notes.extend(notes)
    walk.busy_policy, walk.busy_prompt = line.busy, line.busy_prompt
    if line.schedule is not None:
        schedule = config.schedules[line.schedule]
        local = local_time(schedule, now)
        stamp = f"{schedule.timezone} {_DAYS[local.weekday()]} {local.hour:02}:{local.minute:02}"
        if not is_open_local(schedule, local):
            holiday = local.date() if local.date() in schedule.holidays else None
            return _after_hours(walk, number, line, holiday, stamp)
        walk.notes.append(f"open: {stamp}")
    else:
        walk.notes.append("no schedule: always open")

    walk.walk(line.route)
    if not walk.rang:
        walk.notes.append("nobody could be rung")
    responsible, why = _responsible(walk, line, walk.box, after_hours=False)
    walk.notes.append(f"missed-call task for {responsible} ({why})" if responsible
                      else f"missed-call task for nobody ({why})")
    return _plan(walk, number=number, source=source, rule="route", responsible=responsible)


def _outbound(call: InboundCall, config: Config) -> Plan:
    """Rule 0: a manager dials out from his desk phone."""
    who = _short(call.caller_raw or call.caller, config)
    if who is None or who[0] != "staff":
        return _refused(f"outbound call from {call.caller_raw or call.caller}, which is no "
                        "manager's short number: refused")
    staff_id = who[1]
    try:
        number = validate_dial_number(call.dialed, config.numbers.default_region,
                                      config.numbers.dial_allowed)
    except DialRefused as exc:
        return _refused(f"{staff_id} dialed {call.dialed!r}: {exc.reason}", manager=staff_id)
    department_id = config.department_of(staff_id) or next(
        (d for d, dep in config.departments.items() if dep.head == staff_id), None)
    caller_id = (config.departments[department_id].caller_id
                 if department_id is not None else None)
    client = Target("", f"PJSIP/{number}@{config.asterisk.trunk}", kind="client")
    ring = Ring((client,), RingMode.ALL, config.click_to_call.client_ring_seconds,
                why=f"outbound call by {staff_id}", caller_id=caller_id)
    shown = caller_id or "the phone's own caller ID (no department caller_id)"
    return Plan(steps=(ring,), line=caller_id, source="outbound", rule="outbound",
                record=True, responsible=None, unanswered_outcome=CallOutcome.NO_ANSWER,
                manager=staff_id,
                notes=(f"outbound call by {staff_id} to {number}", f"caller ID: {shown}"))


def _refused(why: str, manager: str | None = None) -> Plan:
    return Plan(steps=(Reject("congestion", why=why),), line=None, source="outbound",
                rule="outbound_refused", record=False, responsible=None,
                unanswered_outcome=CallOutcome.REJECTED, manager=manager, notes=(why,))


def _after_hours(walk: _Walk, number: str, line: Line, holiday: date | None,
                 stamp: str) -> Plan:
    reason = f"holiday {holiday}" if holiday else "outside working hours"
    walk.notes.append(f"closed: {stamp} ({reason}, schedule {line.schedule})")
    owner = _known_owner(walk.facts, walk.config)
    if owner is not None:
        walk.notes.append(f"owner {owner} from CRM")
    elif not walk.facts.crm_ok:
        walk.notes.append("CRM did not answer in time")
    after = line.after_hours
    if after is not None and after.prompt is not None:
        walk.steps.append(Play(after.prompt, why="after hours"))
    if after is not None and after.voicemail is not None:
        walk.steps.append(Voicemail(after.voicemail, why="after hours"))
    if not walk.steps:
        walk.notes.append("no after_hours prompt or voicemail: the call is hung up")
    responsible, why = _responsible(walk, line, after.voicemail if after else None,
                                    after_hours=True)
    walk.notes.append(f"missed-call task for {responsible} ({why})" if responsible
                      else f"missed-call task for nobody ({why})")
    return _plan(walk, number=number, source=line.source, rule="after_hours",
                 responsible=responsible, outcome=CallOutcome.AFTER_HOURS, record=False)


def _plan(walk: _Walk, *, number: str | None, source: str | None, rule: str,
          responsible: str | None, outcome: CallOutcome = CallOutcome.MISSED,
          record: bool = True) -> Plan:
    return Plan(steps=tuple(walk.steps), line=number, source=source, rule=rule,
                record=record, responsible=responsible, unanswered_outcome=outcome,
                skipped=tuple(walk.skipped), notes=tuple(walk.notes),
                assign_sticky=walk.assign_sticky, cursor_used=dict(walk.cursor_used))


# --------------------------------------------------------------------------------------------
# For people: pbxbrain route
# --------------------------------------------------------------------------------------------


def _describe_step(step: Step) -> str:
    why = f" — {step.why}" if step.why else ""
    match step:
        case Ring():
            who = ", ".join(f"{target.staff_id} {target.endpoint}" for target in step.targets)
            how = (f"one by one, {step.timeout_s} s each" if step.mode is RingMode.SEQUENTIAL
                   else f"at once, {step.timeout_s} s")
            return f"ring {how}: {who}{why}"
        case Play():
            return f"play {step.prompt}{why}"
        case Voicemail():
            return f"voicemail {step.box}{why}"
        case Reject():
            return f"reject ({step.cause}){why}"


def explain(plan: Plan) -> str:
    """The plan as text for ops (``pbxbrain route``): what happens, then why."""
    head = f"rule: {plan.rule}"
    if plan.line is not None:
        head += f"   line: {plan.line}" + (f" (source {plan.source})" if plan.source else "")
    head += f"   record: {'yes' if plan.record else 'no'}"
    lines = [head, "steps:"]
    lines += [f"  {index}. {_describe_step(step)}"
              for index, step in enumerate(plan.steps, start=1)]
    if not plan.steps:
        lines.append("  (none)" + (": hand the call to the dialplan fallback"
                                   if plan.fallback else ""))
    task = f"; missed-call task for {plan.responsible}" if plan.responsible else ""
    lines.append(f"if nobody answers: {plan.unanswered_outcome.value}{task}")
    if plan.skipped:
        lines.append("skipped: " + ", ".join(f"{skip.staff_id} ({skip.reason})"
                                             for skip in plan.skipped))
    if plan.assign_sticky:
        lines.append(f"remember {plan.assign_sticky} as this caller's manager")
    if plan.cursor_used:
        lines.append("round-robin positions: " + ", ".join(
            f"{department}={position}" for department, position in plan.cursor_used.items()))
    lines.append("why:")
    lines += [f"  - {note}" for note in plan.notes]
    return "\n".join(lines)


def step_to_json(step: Step, *, max_targets: int | None = None) -> dict[str, Any]:
    """One step as JSON-ready data: ``pbxbrain route --json`` and the journal's ``routed``.

    ``max_targets`` keeps only the first targets of a ring step and counts the others in
    ``more_targets``: the journal keeps what a person reads, not a 600-name hunt list for
    every call (its ``ringing`` entries say who actually rang).
    """
    match step:
        case Ring():
            targets = step.targets if max_targets is None else step.targets[:max_targets]
            data: dict[str, Any] = {
                "kind": "ring", "mode": step.mode.value, "timeout_s": step.timeout_s,
                "targets": [{"staff_id": target.staff_id, "endpoint": target.endpoint,
                             "kind": target.kind} for target in targets],
                "why": step.why}
            if len(targets) < len(step.targets):
                data["more_targets"] = len(step.targets) - len(targets)
            return data
        case Play():
            return {"kind": "play", "prompt": step.prompt, "why": step.why}
        case Voicemail():
            return {"kind": "voicemail", "box": step.box, "why": step.why}
        case Reject():
            return {"kind": "reject", "cause": step.cause, "why": step.why}


JOURNAL_TARGETS = 10
"""Targets of a ring step kept in the journal's ``routed`` entry (the rest are counted)."""
JOURNAL_SKIPPED = 20
"""People left out kept in the journal's ``routed`` entry (the rest are counted)."""


def plan_to_journal(plan: Plan) -> dict[str, Any]:
    """The journal's ``routed`` entry: rule, notes, steps, who was left out and why.

    Bounded whatever the directory's size: a round-robin department of 600 made a 38 KB
    entry per call when every target was kept, most of the journal's bytes and of the
    CPU spent writing it.
    """
    skipped = plan.skipped[:JOURNAL_SKIPPED]
    data: dict[str, Any] = {
        "rule": plan.rule,
        "notes": list(plan.notes),
        "steps": [step_to_json(step, max_targets=JOURNAL_TARGETS) for step in plan.steps],
        "skipped": {skip.staff_id: skip.reason for skip in skipped},
        "responsible": plan.responsible,
    }
    if len(skipped) < len(plan.skipped):
        data["more_skipped"] = len(plan.skipped) - len(skipped)
    return data


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (``pbxbrain route --json``)."""
    return {
        "rule": plan.rule,
        "line": plan.line,
        "source": plan.source,
        "record": plan.record,
        "fallback": plan.fallback,
        "steps": [step_to_json(step) for step in plan.steps],
        "unanswered_outcome": plan.unanswered_outcome.value,
        "responsible": plan.responsible,
        "skipped": [{"staff_id": skip.staff_id, "reason": skip.reason}
                    for skip in plan.skipped],
        "assign_sticky": plan.assign_sticky,
        "cursor_used": dict(plan.cursor_used),
        "notes": list(plan.notes),
    }
