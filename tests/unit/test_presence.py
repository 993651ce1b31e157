"""Who is free: Asterisk's phone states (asked once for calls arriving together; a channel
that ends is taken out of them) joined with pbxbrain's reservations."""

from __future__ import annotations

import asyncio
from typing import cast

from pbxbrain.adapters.ari import AriClient, AriUnavailable, Endpoint
from pbxbrain.adapters.presence import Presence, _PhoneChannels

PHONES = {"ivanov": "PJSIP/101", "petrov": "PJSIP/102", "orlov": "PJSIP/105"}


class FakeAri:
    """``endpoints_of`` answering ``endpoints`` once ``release`` is set."""

    def __init__(self) -> None:
        self.endpoints = [Endpoint("PJSIP", "101", "online", ("ch-1",)),
                          Endpoint("PJSIP", "102", "online", ()),
                          Endpoint("PJSIP", "105", "offline", ())]
        self.requests = 0
        self.asked: asyncio.Queue[int] = asyncio.Queue()  # one item per request
        self.release = asyncio.Event()
        self.release.set()
        self.down = False

    async def endpoints_of(self, technology: str) -> list[Endpoint]:
        assert technology == "PJSIP"
        self.requests += 1
        answer = list(self.endpoints)  # the states when Asterisk was asked
        self.asked.put_nowait(self.requests)
        await self.release.wait()
        if self.down:
            raise AriUnavailable("GET", "/endpoints/PJSIP", 0, "Asterisk unreachable")
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def presence(ari: FakeAri, clock: Clock) -> Presence:
    return Presence(cast(AriClient, ari), PHONES, max_age_s=0.5, clock=clock)


async def test_given_phones_then_channels_mean_busy_and_unregistered_means_offline() -> None:
    ari, clock = FakeAri(), Clock()
    p = presence(ari, clock)
    p.reserve("petrov", "call-1")
    assert await p.snapshot() == (frozenset({"ivanov", "petrov"}), frozenset({"orlov"}))


async def test_given_calls_arriving_together_then_asterisk_is_asked_once() -> None:
    ari, clock = FakeAri(), Clock()
    ari.release.clear()
    p = presence(ari, clock)
    views = [asyncio.ensure_future(p.snapshot()) for _ in range(5)]
    await asyncio.sleep(0)
    ari.release.set()
    results = await asyncio.gather(*views)
    assert ari.requests == 1
    assert len(set(results)) == 1


async def test_given_a_recent_answer_then_it_serves_until_it_is_too_old() -> None:
    ari, clock = FakeAri(), Clock()
    p = presence(ari, clock)
    await p.snapshot()
    clock.now += 0.4
    p.reserve("petrov", "call-1")  # reservations count at once, cached or not
    assert (await p.snapshot())[0] == {"ivanov", "petrov"}
    assert ari.requests == 1
    clock.now += 0.2
    ari.endpoints[0] = Endpoint("PJSIP", "101", "online", ())
    assert (await p.snapshot())[0] == {"petrov"}
    assert ari.requests == 2


async def test_given_a_channel_ended_then_its_phone_is_free_without_asking_again() -> None:
    ari, clock = FakeAri(), Clock()
    p = presence(ari, clock)
    assert (await p.snapshot())[0] == {"ivanov"}
    p.changed("ch-other")  # not one of the phones' channels: nothing changes
    assert (await p.snapshot())[0] == {"ivanov"}
    p.changed("ch-1")
    assert (await p.snapshot())[0] == frozenset()
    assert ari.requests == 1


async def test_given_a_phone_on_two_channels_then_it_is_free_when_both_ended() -> None:
    ari, clock = FakeAri(), Clock()
    ari.endpoints[0] = Endpoint("PJSIP", "101", "online", ("ch-1", "ch-2"))
    p = presence(ari, clock)
    await p.snapshot()
    p.changed("ch-1")
    assert (await p.snapshot())[0] == {"ivanov"}
    p.changed("ch-2")
    assert (await p.snapshot())[0] == frozenset()


async def test_given_a_channel_ended_while_asking_then_the_answer_does_not_show_it(
) -> None:
    ari, clock = FakeAri(), Clock()
    ari.release.clear()
    p = presence(ari, clock)
    asking = asyncio.ensure_future(p.snapshot())
    await asyncio.wait_for(ari.asked.get(), 1)  # Asterisk has been asked (ch-1 is up)
    p.changed("ch-1")  # ivanov's call ended after Asterisk was asked: the answer shows it
    later = asyncio.ensure_future(p.snapshot())  # a call arriving now shares the request
    ari.release.set()
    assert (await asking)[0] == frozenset()
    assert (await later)[0] == frozenset()
    assert (await p.snapshot())[0] == frozenset()  # and so does the answer kept
    assert ari.requests == 1


async def test_given_a_channel_ended_before_asking_then_a_later_answer_is_not_edited(
) -> None:
    ari, clock = FakeAri(), Clock()
    p = presence(ari, clock)
    p.changed("ch-1")  # nothing kept, nothing being asked: remembered nowhere
    assert (await p.snapshot())[0] == {"ivanov"}  # Asterisk says ch-1 is up: it is


async def test_given_asterisk_down_then_reservations_only_and_asked_again_next_time() -> None:
    ari, clock = FakeAri(), Clock()
    ari.down = True
    p = presence(ari, clock)
    p.reserve("ivanov", "call-1")
    view = await p.view()
    assert (view.busy, view.offline) == (frozenset({"ivanov"}), frozenset())
    assert "unreachable" in view.error
    ari.down = False
    assert (await p.snapshot())[1] == {"orlov"}
    assert ari.requests == 2


async def test_given_a_decision_cancelled_then_the_shared_request_goes_on() -> None:
    ari, clock = FakeAri(), Clock()
    ari.release.clear()
    p = presence(ari, clock)
    first = asyncio.ensure_future(p.snapshot())
    second = asyncio.ensure_future(p.snapshot())
    await asyncio.sleep(0)
    first.cancel()
    ari.release.set()
    assert (await second)[1] == {"orlov"}
    assert ari.requests == 1


async def test_given_a_channel_ended_just_after_the_answer_came_then_it_is_not_kept(
) -> None:
    # The request is done, but its callback (which keeps the answer) runs a loop turn
    # later; a ChannelDestroyed handled in between must still count.
    ari, clock = FakeAri(), Clock()
    p = presence(ari, clock)
    request: asyncio.Future[_PhoneChannels] = asyncio.get_running_loop().create_future()
    p._asking = request
    request.set_result(_PhoneChannels({"ch-1": ("ivanov",)}, frozenset()))
    p.changed("ch-1")  # the answer is in, _asked has not run yet
    p._asked(request)
    assert (await p.snapshot())[0] == frozenset()
    assert ari.requests == 0


async def test_given_two_managers_sharing_a_phone_then_a_call_on_it_makes_both_busy(
) -> None:
    ari, clock = FakeAri(), Clock()
    p = Presence(cast(AriClient, ari), {**PHONES, "pair": "PJSIP/101"}, max_age_s=0.5,
                 clock=clock)
    assert (await p.snapshot())[0] == {"ivanov", "pair"}
    p.changed("ch-1")
    assert (await p.snapshot())[0] == frozenset()
