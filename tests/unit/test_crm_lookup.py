"""The call path's CRM lookup: deadline, caching, shared requests; and make_crm's choice."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

import aiohttp
import pytest

from pbxbrain.adapters.crm_bitrix24 import Bitrix24Crm
from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.crm_factory import CachedLookup, LookupResult, crm_ids, make_crm
from pbxbrain.adapters.crm_webhook import WebhookCrm
from pbxbrain.adapters.db import create_engine
from pbxbrain.config import parse_config
from pbxbrain.domain.model import CallSummary, Contact, MissedCall
from pbxbrain.ports import CrmUnavailable

PHONE = "+79161234567"
ANNA = Contact(PHONE, "Anna", "ivanov")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowCrm:
    """Answers ``contacts`` (None: unknown number); ``gate`` holds answers until set;
    ``fail`` makes lookups raise CrmUnavailable."""

    def __init__(self, contacts: Mapping[str, Contact] | None = None) -> None:
        self.contacts = dict(contacts or {})
        self.asked: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def find_contact(self, phone: str) -> Contact | None:
        self.asked.append(phone)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise CrmUnavailable("CRM down")
        return self.contacts.get(phone)

    async def missed_call(self, missed: MissedCall, key: str) -> None: ...

    async def called_back(self, phone: str, call_id: str, by: str | None, at: datetime,
                          key: str) -> None: ...

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None: ...

    async def screen_pop(self, event: Mapping[str, object]) -> None: ...


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cached(crm: SlowCrm, clock: Clock, **options: float) -> CachedLookup:
    settings = {"ttl_s": 300.0, "negative_ttl_s": 60.0, "deadline_s": 0.05}
    settings.update(options)
    return CachedLookup(crm, clock=clock, **settings)  # type: ignore[arg-type]


async def test_given_known_number_then_answer_cached_for_the_ttl(clock: Clock) -> None:
    crm = SlowCrm({PHONE: ANNA})
    lookup = cached(crm, clock)

    first = await lookup.lookup(PHONE)
    clock.now += 299
    second = await lookup.lookup(PHONE)
    clock.now += 1
    third = await lookup.lookup(PHONE)

    assert first == LookupResult(ANNA, answered=True)
    assert first.owner == "ivanov"
    assert second == LookupResult(ANNA, answered=True, cached=True)
    assert third == LookupResult(ANNA, answered=True)
    assert crm.asked == [PHONE, PHONE]


async def test_given_unknown_number_then_absence_cached_for_the_shorter_ttl(
    clock: Clock,
) -> None:
    crm = SlowCrm()
    lookup = cached(crm, clock)

    assert await lookup.lookup(PHONE) == LookupResult(None, answered=True)
    clock.now += 59
    assert (await lookup.lookup(PHONE)).cached
    clock.now += 1
    assert not (await lookup.lookup(PHONE)).cached
    assert len(crm.asked) == 2


async def test_given_slow_crm_then_no_answer_in_time_and_the_late_answer_is_kept(
    clock: Clock,
) -> None:
    crm = SlowCrm({PHONE: ANNA})
    crm.gate = asyncio.Event()
    lookup = cached(crm, clock)

    late = await lookup.lookup(PHONE)
    background = lookup._inflight[PHONE]
    crm.gate.set()
    await background
    later = await lookup.lookup(PHONE)

    assert late == LookupResult(None, answered=False)
    assert late.owner is None
    assert later == LookupResult(ANNA, answered=True, cached=True)
    assert crm.asked == [PHONE]
    assert lookup.unanswered == 1


async def test_given_crm_down_then_no_answer_and_nothing_cached(clock: Clock) -> None:
    crm = SlowCrm({PHONE: ANNA})
    crm.fail = True
    lookup = cached(crm, clock)

    assert await lookup.lookup(PHONE) == LookupResult(None, answered=False)
    crm.fail = False
    assert await lookup.lookup(PHONE) == LookupResult(ANNA, answered=True)
    assert len(crm.asked) == 2


async def test_given_concurrent_lookups_of_one_number_then_one_request(clock: Clock) -> None:
    crm = SlowCrm({PHONE: ANNA})
    lookup = cached(crm, clock, deadline_s=5.0)

    # All five start before the request they share gets its first turn.
    results = await asyncio.gather(*(lookup.lookup(PHONE) for _ in range(5)))

    assert results == [LookupResult(ANNA, answered=True)] * 5
    assert crm.asked == [PHONE]


async def test_given_invalidated_number_then_asked_again(clock: Clock) -> None:
    crm = SlowCrm({PHONE: ANNA})
    lookup = cached(crm, clock)
    await lookup.lookup(PHONE)

    lookup.invalidate(PHONE)
    await lookup.lookup(PHONE)

    assert crm.asked == [PHONE, PHONE]


async def test_given_invalidation_during_a_lookup_then_its_answer_is_not_cached(
    clock: Clock,
) -> None:
    crm = SlowCrm()
    crm.gate = asyncio.Event()
    lookup = cached(crm, clock)
    await lookup.lookup(PHONE)  # no answer in time
    background = lookup._inflight[PHONE]

    lookup.invalidate(PHONE)  # e.g. a missed call just created the contact
    crm.contacts[PHONE] = ANNA
    crm.gate.set()
    await background

    assert await lookup.lookup(PHONE) == LookupResult(ANNA, answered=True)


async def test_given_number_that_is_not_e164_then_no_lookup(clock: Clock) -> None:
    crm = SlowCrm()
    lookup = cached(crm, clock)

    assert await lookup.lookup("anonymous") == LookupResult(None, answered=True, cached=True)
    assert crm.asked == []


async def test_given_full_cache_then_oldest_entries_go(clock: Clock) -> None:
    crm = SlowCrm()
    lookup = cached(crm, clock, max_entries=2)

    for number in ("+79160000001", "+79160000002", "+79160000003"):
        await lookup.lookup(number)
    await lookup.lookup("+79160000001")

    assert crm.asked == ["+79160000001", "+79160000002", "+79160000003", "+79160000001"]


async def test_given_close_then_background_lookups_are_cancelled(clock: Clock) -> None:
    crm = SlowCrm()
    crm.gate = asyncio.Event()
    lookup = cached(crm, clock)
    await lookup.lookup(PHONE)
    background = lookup._inflight[PHONE]

    await lookup.close()

    assert background.cancelled()


# --------------------------------------------------------------------------- make_crm

HEAD = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
staff:
  ivanov: {name: Ivan, phone: PJSIP/101, crm_id: "17"}
  petrov: {name: Petr, phone: PJSIP/102}
"""


@pytest.mark.parametrize(
    ("crm", "kind"),
    [
        ("crm: {kind: builtin}\n", BuiltinCrm),
        ("crm: {kind: webhook, url: 'https://crm.example/hook', secret: s}\n", WebhookCrm),
        ("crm: {kind: bitrix24, webhook_url: 'https://x.bitrix24.ru/rest/1/abc/'}\n",
         Bitrix24Crm),
    ],
)
async def test_given_crm_kind_then_make_crm_builds_its_adapter(crm: str, kind: type) -> None:
    config = parse_config(HEAD + crm, env={})
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    async with aiohttp.ClientSession() as session:
        made = make_crm(config, engine, session)
    await engine.dispose()

    assert isinstance(made, kind)
    assert crm_ids(config) == {"ivanov": "17", "petrov": "petrov"}
