"""Benchmark column (2): the smallest Stasis app that does pbxbrain's job without its brain.

On ``StasisStart`` with args ``min,<endpoint>``: ring ``endpoint``, answer the caller when it
answers, bridge both, record the caller's channel (MixMonitor through AMI, as pbxbrain
does), hang up the other side when one leaves. No routing, no database, no CRM: what
remains is the cost of the ARI architecture itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys

from pbxbrain.adapters.ami import AmiClient, AmiError
from pbxbrain.adapters.ari import (
    AriClient,
    AriError,
    AriEvent,
    ChannelDestroyed,
    StasisEnd,
    StasisStart,
)

APP = "pbxbench"


class Minimal:
    def __init__(self, ari: AriClient, ami: AmiClient) -> None:
        self.ari = ari
        self.ami = ami
        self.pairs: dict[str, str] = {}  # channel -> its partner
        self.bridges: dict[str, str] = {}  # channel -> bridge
        self.ids = itertools.count(1)
        self.tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: AriEvent) -> None:
        match event:
            case StasisStart(channel=channel, args=["min", endpoint]):
                self._spawn(self.inbound(channel.id, endpoint, channel.caller.number))
            case StasisStart(channel=channel, args=["leg", caller]):
                self._spawn(self.answered(caller, channel.id))
            case StasisEnd(channel=channel) | ChannelDestroyed(channel=channel):
                self._spawn(self.gone(channel.id))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def inbound(self, caller: str, endpoint: str, number: str) -> None:
        leg = f"min-{next(self.ids)}"
        self.pairs[caller], self.pairs[leg] = leg, caller
        with contextlib.suppress(AriError):
            await self.ari.ring(caller)
            await self.ari.originate(endpoint, app_args=f"leg,{caller}", channel_id=leg,
                                     caller_id=number, timeout_s=20)

    async def answered(self, caller: str, leg: str) -> None:
        bridge = f"{leg}-bridge"
        self.bridges[caller] = self.bridges[leg] = bridge
        with contextlib.suppress(AriError, AmiError):
            await self.ari.answer(caller)
            await self.ari.create_bridge(bridge)
            await self.ari.add_channels(bridge, caller, leg)
            await self.ami.mix_monitor(caller, f"/var/spool/asterisk/recording/{bridge}.wav")

    async def gone(self, channel: str) -> None:
        partner = self.pairs.pop(channel, None)
        bridge = self.bridges.pop(channel, None)
        if partner is not None:
            self.pairs.pop(partner, None)
            self.bridges.pop(partner, None)
            with contextlib.suppress(AriError):
                await self.ari.hangup(partner)
        if bridge is not None:
            with contextlib.suppress(AriError):
                await self.ari.destroy_bridge(bridge)


async def main(url: str, user: str, password: str, ami_secret: str) -> None:
    from pbxbrain.adapters.ari import AriEventStream

    ari = AriClient(url, user, password, APP)
    ami = AmiClient("127.0.0.1", 5038, "pbxbrain", ami_secret)
    await ami.start()
    app = Minimal(ari, ami)

    async def on_link(up: bool) -> None:
        return None

    stream = AriEventStream(ari, app.on_event, on_link)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.create_task(stream.run())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ari.close()
    await ami.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
