"""The router's fact gathering: cursors, the caller's sticky manager, the CRM owner."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from pbxbrain.config import Config, parse_config
from pbxbrain.domain.model import Contact, InboundCall
from pbxbrain.domain.plan import Plan, Ring
from pbxbrain.ports import LookupResult, StoreUnavailable
from pbxbrain.service import Router
from tests.support.api_fakes import FakeStore

AT = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CALLER = "+79161112233"

CONFIG = """
asterisk: {ari: {user: u, password: p}, ami: {user: u, secret: s}, trunk: pstn}
numbers: {default_region: RU}
staff:
  ivanov: {name: Ivan, phone: PJSIP/101}
  petrov: {name: Petr, phone: PJSIP/102}
  sidorov: {name: Sidor, phone: PJSIP/103}
  kuznetsov: {name: Kuzma, phone: PJSIP/104}
departments:
  accounts: {members: [ivanov, petrov], strategy: sticky, ring_seconds: 5}
  sales: {members: [sidorov], head: kuznetsov, ring_seconds: 5}
lines:
  "+74951000001": {route: [{department: accounts}, {manager: kuznetsov}]}
  "+74951000002": {route: [{department: sales}]}
"""


@dataclass
class MemoryStore(FakeStore):
    """Cursors and sticky managers in memory; ``down`` makes both fail."""

    managers: dict[str, str] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    down: bool = False

    async def advance_cursor(self, group: str, size: int) -> int:
        if self.down:
            raise StoreUnavailable("database down")
        position = self.positions.get(group, 0)
        self.positions[group] = position + 1
        return position % size

    async def manager_of(self, phone: str) -> str | None:
        self.asked.append(phone)
        if self.down:
            raise StoreUnavailable("database down")
        return self.managers.get(phone)


class Phones:
    async def snapshot(self) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(), frozenset()

    def reserve(self, staff_id: str, call_id: str) -> bool:
        return True

    def release(self, staff_id: str, call_id: str) -> None:
        return None

    def release_all(self, call_id: str) -> None:
        return None

    def changed(self, channel_id: str) -> None:
        return None


@dataclass
class Lookup:
    owner: str | None = None

    async def lookup(self, phone: str) -> LookupResult:
        contact = Contact(phone=phone, owner=self.owner) if self.owner else None
        return LookupResult(contact, answered=True)


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, "router.yaml")


def first_rung(plan: Plan) -> str:
    step = plan.steps[0]
    assert isinstance(step, Ring), step
    return step.targets[0].staff_id


def call(dialed: str, caller: str = CALLER) -> InboundCall:
    return InboundCall("c1", "chan1", caller, caller.lstrip("+"), dialed, AT)


async def test_given_a_remembered_manager_then_he_rings_first_and_nobody_is_reassigned(
    config: Config,
) -> None:
    store = MemoryStore(managers={CALLER: "petrov"})
    plan, _ = await Router(config, store, Phones(), Lookup()).plan(call("74951000001"), AT)
    assert first_rung(plan) == "petrov"
    assert plan.assign_sticky is None


async def test_given_a_new_caller_then_the_round_robin_pick_is_assigned(config: Config) -> None:
    store = MemoryStore(positions={"accounts": 1})
    router = Router(config, store, Phones(), Lookup())
    plan, _ = await router.plan(call("74951000001"), AT)
    assert plan.assign_sticky == "petrov"
    # The pick's colleague answered: he talked to the caller, he keeps him.
    assert router.manager_to_remember(plan, "ivanov") == "ivanov"
    # Nobody answered: the pick, who gets the missed-call task, keeps him.
    assert router.manager_to_remember(plan, None) == "petrov"
    # Answered by a later step's manager, outside the department: still the pick.
    assert router.manager_to_remember(plan, "kuznetsov") == "petrov"


async def test_given_the_crm_knows_an_owner_then_he_beats_the_remembered_manager(
    config: Config,
) -> None:
    store = MemoryStore(managers={CALLER: "petrov"})
    plan, _ = await Router(config, store, Phones(), Lookup(owner="ivanov")).plan(
        call("74951000001"), AT)
    assert first_rung(plan) == "ivanov"


async def test_given_no_sticky_department_on_the_route_then_the_memory_is_not_read(
    config: Config,
) -> None:
    store = MemoryStore(managers={CALLER: "petrov"})
    router = Router(config, store, Phones(), Lookup())
    plan, _ = await router.plan(call("74951000002"), AT)
    assert store.asked == []
    assert plan.assign_sticky is None
    assert router.manager_to_remember(plan, "sidorov") is None


async def test_given_the_database_down_then_the_call_is_routed_and_nobody_reassigned(
    config: Config,
) -> None:
    store = MemoryStore(managers={CALLER: "petrov"}, down=True)
    router = Router(config, store, Phones(), Lookup())
    plan, _ = await router.plan(call("74951000001"), AT)
    assert store.asked == [CALLER]
    assert plan.steps  # round robin from memory, his manager not known
    # Assigning the pick now would replace petrov for good once the database is back.
    assert plan.assign_sticky is None
    assert router.manager_to_remember(plan, "ivanov") is None
    assert "this caller's manager in accounts is not known now: nobody new is assigned" \
        in plan.notes
