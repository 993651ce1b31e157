"""A FastAGI conversation a previous pbxbrain left, followed to its end after a restart
(``CallSession.follow_dial``): the end is the caller's channel destroyed, not a hang-up
request, and a lost subscription is made up for by asking Asterisk."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import cast

import pytest

from pbxbrain.adapters import stasis
from pbxbrain.adapters.ari import (
    AriNotFound,
    CallerId,
    Channel,
    ChannelDestroyed,
    ChannelHangupRequest,
)
from pbxbrain.adapters.stasis import CallSession, StasisApp, StasisSettings
from pbxbrain.domain.model import CallOutcome, Direction, InboundCall
from tests.unit.test_agi_calls import NOW, FakeJournal, FakePhones

CHANNEL = "1764583200.1"


class FakeAri:
    def __init__(self, *, gone_after: int | None = None) -> None:
        self.asked = 0
        self.gone_after = gone_after  # GET /channels answers 404 from this ask on

    async def channel(self, channel_id: str) -> Channel:
        self.asked += 1
        if self.gone_after is not None and self.asked >= self.gone_after:
            raise AriNotFound("GET", f"/channels/{channel_id}", 404, "Channel not found")
        return channel_of(channel_id)


def channel_of(channel_id: str) -> Channel:
    nobody = CallerId("", "")
    return Channel(channel_id, "PJSIP/pstn-agi-00000001", "Up", nobody, nobody, "", "", 0,
                   NOW)


def session_of(ari: FakeAri) -> tuple[CallSession, FakeJournal, FakePhones]:
    journal, phones = FakeJournal(), FakePhones()
    clock = iter(NOW + timedelta(seconds=i) for i in range(1000))
    app = cast(StasisApp, SimpleNamespace(
        ari=ari, journal=journal, phones=phones,
        settings=StasisSettings(node="n1", default_region="RU",
                                fallback_context="pbxbrain-fallback"),
        clock=lambda: next(clock), publish=lambda _t, _d: None,
        follow_ups=lambda *_a, **_k: []))
    call = InboundCall(call_id="c1", channel_id=CHANNEL, caller="+79161112233",
                       caller_raw="+79161112233", dialed="74951234567", at=NOW,
                       direction=Direction.INBOUND, node="n1")
    session = CallSession(app, call)
    session.talk_started = NOW
    phones.reserve("ivanov", "c1")
    return session, journal, phones


async def test_a_hang_up_request_is_not_the_end_but_the_destroyed_channel_is() -> None:
    session, journal, phones = session_of(FakeAri())
    task = asyncio.create_task(session.follow_dial(None, "ivanov"))
    # A transfer: the caller's channel is asked to leave its Dial, and goes on.
    session.feed(ChannelHangupRequest("ChannelHangupRequest", NOW + timedelta(seconds=5),
                                      {}, channel_of(CHANNEL), 16, soft=True))
    await asyncio.sleep(0)
    assert not task.done()
    ended = NOW + timedelta(seconds=60)
    session.feed(ChannelDestroyed("ChannelDestroyed", ended, {}, channel_of(CHANNEL), 16,
                                  "Normal Clearing"))
    await asyncio.wait_for(task, 1)

    assert journal.closed_as == [(CallOutcome.ANSWERED, {"answered_by": "ivanov"})]
    assert session.caller_gone is not None
    assert session.caller_gone.at == ended
    assert phones.reserved == {}  # ivanov is free again


async def test_without_events_asterisk_is_asked_until_the_channel_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stasis, "FOLLOW_CHECK_S", 0.01)
    ari = FakeAri(gone_after=3)
    session, journal, _ = session_of(ari)

    await asyncio.wait_for(session.follow_dial(None, "ivanov"), 2)

    assert ari.asked == 3
    assert journal.closed_as == [(CallOutcome.ANSWERED, {"answered_by": "ivanov"})]


async def test_a_stop_while_following_leaves_the_call_open() -> None:
    session, journal, phones = session_of(FakeAri())
    task = asyncio.create_task(session.follow_dial(None, "ivanov"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert session.handed_over
    assert journal.closed_as == []
    assert phones.reserved == {"ivanov": "c1"}  # the conversation goes on
