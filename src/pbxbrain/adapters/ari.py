"""A small typed ARI client on aiohttp: REST calls and a supervised event websocket.

Why our own and not ari-py or its successors: see ``docs/architecture.md`` ("The ARI
client"). In short, none survived an Asterisk restart and none is typed.

The REST side is a thin wrapper per call, raising :class:`AriError` with Asterisk's
status and JSON ``message``. The event side, :class:`AriEventStream`, keeps one
websocket to ``/ari/events`` open for the Stasis app: it reconnects with backoff when
Asterisk restarts or the socket drops (a close without a close frame is a drop too),
sends heartbeats, and tells its owner when the link goes up or down so the owner can
re-sync (the app is unregistered while the socket is down).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

log = logging.getLogger(__name__)

Json = dict[str, Any]


class AriError(Exception):
    """ARI answered with an error status, or could not be reached (``status`` 0)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        where = f"{method} {path}"
        super().__init__(
            f"ARI {where}: {status} {message}" if status else f"ARI {where}: {message}"
        )


class AriUnavailable(AriError):
    """Asterisk did not answer (connection refused, timeout, socket closed)."""


class AriNotFound(AriError):
    """404: the channel, bridge or recording is gone (often: the caller hung up)."""


# ---------------------------------------------------------------------------
# Resources and events, parsed from ARI's JSON into frozen values.


def _ts(value: object) -> datetime:
    """Parse ARI's timestamps (``2026-11-24T23:57:49.058+0000``) into aware datetimes."""
    if isinstance(value, str) and value:
        # fromisoformat (C, Python 3.11+) reads ARI's form; strptime is ten times slower
        # and a call brings dozens of timestamps.
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
        with contextlib.suppress(ValueError):
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    return datetime.now(UTC)


def _s(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class CallerId:
    """A name and a number, as on a channel's caller or connected line."""

    name: str
    number: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any] | None) -> CallerId:
        obj = obj or {}
        return cls(name=_s(obj, "name"), number=_s(obj, "number"))


@dataclass(frozen=True, slots=True)
class Channel:
    """An Asterisk channel (one leg of a call)."""

    id: str
    name: str
    state: str
    caller: CallerId
    connected: CallerId
    context: str
    exten: str
    priority: int
    created: datetime
    language: str = "en"
    variables: Mapping[str, str] = field(default_factory=dict)
    app_name: str = ""  # the dialplan application running (``Stasis``)
    app_data: str = ""  # its arguments (``pbxbrain,inbound,74951234567``)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Channel:
        plan = obj.get("dialplan") or {}
        return cls(
            id=_s(obj, "id"),
            name=_s(obj, "name"),
            state=_s(obj, "state"),
            caller=CallerId.parse(obj.get("caller")),
            connected=CallerId.parse(obj.get("connected")),
            context=_s(plan, "context"),
            exten=_s(plan, "exten"),
            priority=int(plan.get("priority") or 0),
            created=_ts(obj.get("creationtime")),
            language=_s(obj, "language") or "en",
            variables={str(k): str(v) for k, v in (obj.get("channelvars") or {}).items()},
            app_name=_s(plan, "app_name"),
            app_data=_s(plan, "app_data"),
        )


@dataclass(frozen=True, slots=True)
class Bridge:
    """A mixing (or holding) bridge and the channels in it."""

    id: str
    bridge_type: str
    name: str
    channels: tuple[str, ...]

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Bridge:
        return cls(
            id=_s(obj, "id"),
            bridge_type=_s(obj, "bridge_type"),
            name=_s(obj, "name"),
            channels=tuple(str(c) for c in obj.get("channels") or ()),
        )


@dataclass(frozen=True, slots=True)
class LiveRecording:
    """A recording in progress or just finished."""

    name: str
    format: str
    state: str
    target_uri: str
    duration_s: int | None = None
    cause: str = ""

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> LiveRecording:
        duration = obj.get("duration")
        return cls(
            name=_s(obj, "name"),
            format=_s(obj, "format"),
            state=_s(obj, "state"),
            target_uri=_s(obj, "target_uri"),
            duration_s=int(duration) if isinstance(duration, int | float) else None,
            cause=_s(obj, "cause"),
        )


@dataclass(frozen=True, slots=True)
class Playback:
    """A sound playing on a channel or bridge."""

    id: str
    media_uri: str
    target_uri: str
    state: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Playback:
        return cls(
            id=_s(obj, "id"),
            media_uri=_s(obj, "media_uri"),
            target_uri=_s(obj, "target_uri"),
            state=_s(obj, "state"),
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A SIP endpoint (a phone or a trunk) and its reachability."""

    technology: str
    resource: str
    state: str  # online | offline | unknown
    channel_ids: tuple[str, ...]

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Endpoint:
        return cls(
            technology=_s(obj, "technology"),
            resource=_s(obj, "resource"),
            state=_s(obj, "state"),
            channel_ids=tuple(str(c) for c in obj.get("channel_ids") or ()),
        )


@dataclass(frozen=True, slots=True)
class AriEvent:
    """Base of all events: when Asterisk emitted it, and the raw JSON for the journal."""

    type: str
    at: datetime
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class StasisStart(AriEvent):
    """A channel entered the app. ``replace_channel`` is set when it replaced another."""

    channel: Channel
    args: tuple[str, ...]
    replace_channel: Channel | None


@dataclass(frozen=True, slots=True)
class StasisEnd(AriEvent):
    """A channel left the app (hung up, or continued in the dialplan)."""

    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelStateChange(AriEvent):
    """Ringing, Up, ..."""

    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelHangupRequest(AriEvent):
    """Somebody asked to hang the channel up (``cause`` is the Q.850 code)."""

    channel: Channel
    cause: int
    soft: bool


@dataclass(frozen=True, slots=True)
class ChannelDestroyed(AriEvent):
    """The channel is gone."""

    channel: Channel
    cause: int
    cause_txt: str


@dataclass(frozen=True, slots=True)
class ChannelDtmfReceived(AriEvent):
    """A key pressed on a channel."""

    channel: Channel
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ChannelEnteredBridge(AriEvent):
    """A channel joined a bridge."""

    bridge: Bridge
    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelLeftBridge(AriEvent):
    """A channel left a bridge."""

    bridge: Bridge
    channel: Channel


@dataclass(frozen=True, slots=True)
class BridgeDestroyed(AriEvent):
    """A bridge was destroyed."""

    bridge: Bridge


@dataclass(frozen=True, slots=True)
class DialEvent(AriEvent):
    """Progress of a dial: ``dialstatus`` is empty while ringing, then ANSWER, BUSY, ..."""

    peer: Channel
    caller: Channel | None
    dialstatus: str


@dataclass(frozen=True, slots=True)
class PlaybackEvent(AriEvent):
    """PlaybackStarted or PlaybackFinished."""

    playback: Playback


@dataclass(frozen=True, slots=True)
class RecordingEvent(AriEvent):
    """RecordingStarted, RecordingFinished or RecordingFailed."""

    recording: LiveRecording


@dataclass(frozen=True, slots=True)
class EndpointStateChange(AriEvent):
    """A phone went online or offline."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DeviceStateChanged(AriEvent):
    """A device's state (``NOT_INUSE``, ``INUSE``, ``RINGING``, ``UNAVAILABLE``, ...)."""

    device: str
    state: str


def parse_event(obj: Mapping[str, Any]) -> AriEvent:
    """Turn one websocket message into a typed event; unknown types stay plain AriEvent."""
    kind = _s(obj, "type")
    at = _ts(obj.get("timestamp"))
    channel = obj.get("channel")
    match kind:
        case "StasisStart":
            replaced = obj.get("replace_channel")
            return StasisStart(
                kind, at, obj, Channel.parse(channel or {}),
                tuple(str(a) for a in obj.get("args") or ()),
                Channel.parse(replaced) if replaced else None,
            )
        case "StasisEnd":
            return StasisEnd(kind, at, obj, Channel.parse(channel or {}))
        case "ChannelStateChange":
            return ChannelStateChange(kind, at, obj, Channel.parse(channel or {}))
        case "ChannelHangupRequest":
            return ChannelHangupRequest(
                kind, at, obj, Channel.parse(channel or {}),
                int(obj.get("cause") or 0), bool(obj.get("soft")),
            )
        case "ChannelDestroyed":
            return ChannelDestroyed(
                kind, at, obj, Channel.parse(channel or {}),
                int(obj.get("cause") or 0), _s(obj, "cause_txt"),
            )
        case "ChannelDtmfReceived":
            return ChannelDtmfReceived(
                kind, at, obj, Channel.parse(channel or {}),
                _s(obj, "digit"), int(obj.get("duration_ms") or 0),
            )
        case "ChannelEnteredBridge" | "ChannelLeftBridge":
            cls = ChannelEnteredBridge if kind == "ChannelEnteredBridge" else ChannelLeftBridge
            return cls(kind, at, obj, Bridge.parse(obj.get("bridge") or {}),
                       Channel.parse(channel or {}))
        case "BridgeDestroyed":
            return BridgeDestroyed(kind, at, obj, Bridge.parse(obj.get("bridge") or {}))
        case "Dial":
            caller = obj.get("caller")
            return DialEvent(
                kind, at, obj, Channel.parse(obj.get("peer") or {}),
                Channel.parse(caller) if caller else None, _s(obj, "dialstatus"),
            )
        case "PlaybackStarted" | "PlaybackFinished" | "PlaybackContinuing":
            return PlaybackEvent(kind, at, obj, Playback.parse(obj.get("playback") or {}))
        case "RecordingStarted" | "RecordingFinished" | "RecordingFailed":
            return RecordingEvent(kind, at, obj, LiveRecording.parse(obj.get("recording") or {}))
        case "EndpointStateChange":
            return EndpointStateChange(kind, at, obj, Endpoint.parse(obj.get("endpoint") or {}))
        case "DeviceStateChanged":
            ds = obj.get("device_state") or {}
            return DeviceStateChanged(kind, at, obj, _s(ds, "name"), _s(ds, "state"))
        case _:
            return AriEvent(kind, at, obj)


# ---------------------------------------------------------------------------
# REST


#: HTTP connections pbxbrain opens to ARI at most (requests beyond wait for one).
MAX_CONNECTIONS: Final = 32


class AriClient:
    """ARI's REST interface: one thin typed method per call pbxbrain makes."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        request_timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.app = app
        # The Basic auth header, built once (aiohttp's BasicAuth is deprecated).
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        # sock_connect, not connect: aiohttp's ``connect`` also counts the wait for a free
        # pooled connection, which under a burst is queueing, not Asterisk being away.
        self._timeout = aiohttp.ClientTimeout(total=request_timeout,
                                              sock_connect=min(2.0, request_timeout))
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared HTTP session, created on first use inside the running loop."""
        if self._session is None or self._session.closed:
            # Asterisk's HTTP server serves at most ``sessionlimit`` (100 by default)
            # connections and drops the ones above: stay well below, the websocket
            # included.
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        """Absolute URL of an ARI path such as ``/channels``."""
        return f"{self.base_url}/ari{path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Json | None = None,
    ) -> Any:
        """One ARI call. Returns the decoded JSON (or None for 204), raises AriError.

        A GET, PUT or DELETE whose kept-alive connection Asterisk dropped is sent again
        once by aiohttp itself (they are idempotent); a POST is not, as Asterisk may have
        acted on it (an originate, a recording) before the connection dropped.
        """
        query = {k: str(v) for k, v in (params or {}).items()}
        try:
            async with self.session.request(
                method, self.url(path), params=query, json=body
            ) as resp:
                if resp.status == 204:
                    return None
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(method, path, resp.status,
                                 raw.decode("utf-8", errors="replace"))
                return orjson.loads(raw) if raw else None
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise AriUnavailable(method, path, 0, f"Asterisk unreachable: {_describe(exc)}"
                                 ) from exc

    async def read_bytes(self, path: str) -> bytes:
        """GET a binary resource (a stored recording's file)."""
        try:
            async with self.session.get(self.url(path)) as resp:
                if resp.status >= 400:
                    raise _error("GET", path, resp.status, await resp.text())
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # a cut body too
            raise AriUnavailable("GET", path, 0, f"Asterisk unreachable: {_describe(exc)}"
                                 ) from exc

    # -- asterisk ---------------------------------------------------------
    async def info(self) -> Json:
        """``GET /asterisk/info``: build, system and status."""
        result: Json = await self.request("GET", "/asterisk/info")
        return result

    async def ping(self) -> Json:
        """``GET /asterisk/ping``: cheap liveness check."""
        result: Json = await self.request("GET", "/asterisk/ping")
        return result

    # -- channels ---------------------------------------------------------
    async def channels(self) -> list[Channel]:
        """All channels Asterisk has (not only the app's)."""
        return [Channel.parse(c) for c in await self.request("GET", "/channels")]

    async def channel(self, channel_id: str) -> Channel:
        """One channel; AriNotFound when it is gone."""
        return Channel.parse(await self.request("GET", f"/channels/{_q(channel_id)}"))

    async def answer(self, channel_id: str) -> None:
        """Answer a channel."""
        await self.request("POST", f"/channels/{_q(channel_id)}/answer")

    async def ring(self, channel_id: str) -> None:
        """Send ringing indication (ringback) to a channel."""
        await self.request("POST", f"/channels/{_q(channel_id)}/ring")

    async def ring_stop(self, channel_id: str) -> None:
        """Stop ringing indication."""
        await self.request("DELETE", f"/channels/{_q(channel_id)}/ring")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        """Hang a channel up (``reason``: normal, busy, congestion, no_answer, ...)."""
        await self.request("DELETE", f"/channels/{_q(channel_id)}", params={"reason": reason})

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        label: str | None = None,
    ) -> None:
        """Leave the app and go on in the dialplan (by default after the Stasis() line)."""
        params: dict[str, str | int] = {}
        if context:
            params["context"] = context
        if extension:
            params["extension"] = extension
        if priority is not None:
            params["priority"] = priority
        if label:
            params["label"] = label
        await self.request("POST", f"/channels/{_q(channel_id)}/continue", params=params)

    async def originate(
        self,
        endpoint: str,
        *,
        app_args: str = "",
        caller_id: str | None = None,
        timeout_s: int = 30,
        channel_id: str | None = None,
        originator: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> Channel:
        """Call ``endpoint`` (``PJSIP/101``); answered, it enters this app with ``app_args``."""
        params: dict[str, str | int] = {
            "endpoint": endpoint,
            "app": self.app,
            "appArgs": app_args,
            "timeout": timeout_s,
        }
        if caller_id:
            params["callerId"] = caller_id
        if channel_id:
            params["channelId"] = channel_id
        if originator:
            params["originator"] = originator
        body = {"variables": dict(variables)} if variables else None
        return Channel.parse(await self.request("POST", "/channels", params=params, body=body))

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        """Set a channel variable (or function, e.g. ``CALLERID(name)``)."""
        await self.request(
            "POST", f"/channels/{_q(channel_id)}/variable",
            params={"variable": name, "value": value},
        )

    async def get_variable(self, channel_id: str, name: str) -> str:
        """Read a channel variable."""
        result = await self.request(
            "GET", f"/channels/{_q(channel_id)}/variable", params={"variable": name}
        )
        return str((result or {}).get("value", ""))

    async def play(self, target: str, media: str, *, playback_id: str | None = None) -> Playback:
        """Play ``media`` (``sound:hello-world``) on ``channels/ID`` or ``bridges/ID``."""
        params: dict[str, str | int] = {"media": media}
        if playback_id:
            params["playbackId"] = playback_id
        return Playback.parse(await self.request("POST", f"/{target}/play", params=params))

    async def stop_playback(self, playback_id: str) -> None:
        """Stop a playback."""
        await self.request("DELETE", f"/playbacks/{_q(playback_id)}")

    # -- bridges ----------------------------------------------------------
    async def bridges(self) -> list[Bridge]:
        """All bridges."""
        return [Bridge.parse(b) for b in await self.request("GET", "/bridges")]

    async def create_bridge(
        self, bridge_id: str, *, kind: str = "mixing", name: str = ""
    ) -> Bridge:
        """Create a bridge with our own id (idempotent retries)."""
        params: dict[str, str | int] = {"type": kind}
        if name:
            params["name"] = name
        return Bridge.parse(
            await self.request("POST", f"/bridges/{_q(bridge_id)}", params=params)
        )

    async def add_channels(self, bridge_id: str, *channel_ids: str) -> None:
        """Put channels into a bridge, in one request (none is added when one is gone)."""
        await self.request("POST", f"/bridges/{_q(bridge_id)}/addChannel",
                           params={"channel": ",".join(channel_ids)})

    async def remove_channel(self, bridge_id: str, channel_id: str) -> None:
        """Take a channel out of a bridge."""
        await self.request(
            "POST", f"/bridges/{_q(bridge_id)}/removeChannel", params={"channel": channel_id}
        )

    async def destroy_bridge(self, bridge_id: str) -> None:
        """Destroy a bridge (its channels stay up)."""
        await self.request("DELETE", f"/bridges/{_q(bridge_id)}")

    async def record(
        self,
        target: str,
        name: str,
        *,
        fmt: str = "wav",
        max_duration_s: int = 0,
        if_exists: str = "fail",
        beep: bool = False,
        terminate_on: str = "none",
    ) -> LiveRecording:
        """Record ``bridges/ID`` or ``channels/ID`` into the stored recording ``name``."""
        params: dict[str, str | int] = {
            "name": name,
            "format": fmt,
            "maxDurationSeconds": max_duration_s,
            "ifExists": if_exists,
            "beep": "true" if beep else "false",
            "terminateOn": terminate_on,
        }
        return LiveRecording.parse(await self.request("POST", f"/{target}/record", params=params))

    async def stop_recording(self, name: str) -> None:
        """Stop and store a live recording."""
        await self.request("POST", f"/recordings/live/{_q(name)}/stop")

    async def stored_recording_file(self, name: str) -> bytes:
        """The audio of a stored recording (works when Asterisk runs on another host)."""
        return await self.read_bytes(f"/recordings/stored/{_q(name)}/file")

    async def delete_stored_recording(self, name: str) -> None:
        """Delete a stored recording from Asterisk's spool."""
        await self.request("DELETE", f"/recordings/stored/{_q(name)}")

    # -- endpoints --------------------------------------------------------
    async def endpoints(self) -> list[Endpoint]:
        """All endpoints with their state."""
        return [Endpoint.parse(e) for e in await self.request("GET", "/endpoints")]

    async def endpoints_of(self, technology: str) -> list[Endpoint]:
        """The endpoints of one technology (``PJSIP``) with their state and channels."""
        return [Endpoint.parse(e)
                for e in await self.request("GET", f"/endpoints/{_q(technology)}")]

    async def endpoint(self, technology: str, resource: str) -> Endpoint:
        """One endpoint's state."""
        return Endpoint.parse(
            await self.request("GET", f"/endpoints/{_q(technology)}/{_q(resource)}")
        )

    # -- applications -----------------------------------------------------
    async def application(self) -> Json:
        """This app's registration (404 while no websocket is connected)."""
        result: Json = await self.request("GET", f"/applications/{_q(self.app)}")
        return result

    async def set_event_filter(self, allowed: Collection[str]) -> None:
        """Have Asterisk send this app only events of the ``allowed`` types.

        A call brings some 60 events, most of them (``ChannelVarset``, ``Dial``,
        ``ChannelDialplan``, ...) of no use to pbxbrain: filtering them where they are
        made saves Asterisk the JSON and pbxbrain the parsing.
        """
        await self.request("PUT", f"/applications/{_q(self.app)}/eventFilter",
                           body={"allowed": [{"type": kind} for kind in sorted(allowed)]})

    async def subscribe(self, event_source: str) -> None:
        """Subscribe the app to ``endpoint:PJSIP/101``, ``deviceState:PJSIP/101``, ..."""
        await self.request(
            "POST", f"/applications/{_q(self.app)}/subscription",
            params={"eventSource": event_source},
        )


def _describe(exc: BaseException) -> str:
    """An error for logs and health, without request headers (they carry credentials)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        hint = " (wrong ARI user/password? see ari.conf)" if exc.status == 401 else (
            " (ARI not loaded yet, or app name refused)" if exc.status == 404 else "")
        return f"HTTP {exc.status} {exc.message}{hint}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _q(part: str) -> str:
    return quote(part, safe="")


def _error(method: str, path: str, status: int, text: str) -> AriError:
    message = text.strip()
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(text).get("message") or message)
    cls = AriNotFound if status == 404 else AriError
    return cls(method, path, status, message or "(no message)")


# ---------------------------------------------------------------------------
# The event websocket, supervised.

EventHandler = Callable[[AriEvent], None]
LinkHandler = Callable[[bool], Awaitable[None]]

_BACKOFF_FIRST: Final = 0.2
_BACKOFF_MAX: Final = 2.0


class AriEventStream:
    """Keeps the app's websocket connected and hands every event to ``on_event``.

    ``on_event`` is called in order, synchronously, for every event: it must not block
    (queue the work). ``on_link(True)`` is awaited after each (re)connection, before
    events are read, so the owner can re-sync its calls with ``GET /channels``;
    ``on_link(False)`` when the socket drops. ``event_types``: the only event types the
    owner wants (Asterisk is asked to filter the others out); None: all of them.
    """

    def __init__(
        self,
        client: AriClient,
        on_event: EventHandler,
        on_link: LinkHandler,
        *,
        heartbeat_s: float = 5.0,
        event_types: Collection[str] | None = None,
    ) -> None:
        self._client = client
        self._on_event = on_event
        self._on_link = on_link
        self._heartbeat = heartbeat_s
        self._event_types = event_types
        self._filter_warned = False
        self.connected = asyncio.Event()
        self.last_error: str = "not connected yet"
        self.connects = 0

    def _ws_url(self) -> str:
        base = self._client.base_url.replace("http://", "ws://", 1).replace(
            "https://", "wss://", 1)
        return f"{base}/ari/events?app={quote(self._client.app)}&subscribeAll=false"

    async def run(self) -> None:
        """Connect, read, reconnect, forever (until cancelled)."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                await self._session_once()
                delay = _BACKOFF_FIRST  # a session that connected resets the backoff
            except asyncio.CancelledError:
                self.connected.clear()
                self.last_error = "stopped"
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.last_error = f"cannot connect to ARI websocket {self._ws_url()}: " + (
                    _describe(exc))
                log.debug("%s", self.last_error)
            except Exception as exc:
                self.last_error = f"ARI websocket failed: {_describe(exc)}"
                log.exception("ARI event stream failed; reconnecting")
            if self.connected.is_set():
                self.connected.clear()
                log.warning("ARI websocket lost: %s; reconnecting", self.last_error)
                with contextlib.suppress(Exception):
                    await self._on_link(False)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _session_once(self) -> None:
        async with self._client.session.ws_connect(
            self._ws_url(),
            heartbeat=self._heartbeat,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            autoping=True,
        ) as ws:
            self.connects += 1
            self.last_error = ""
            self.connected.set()
            log.info("ARI websocket connected (app %s)", self._client.app)
            await self._filter_events()
            await self._on_link(True)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(msg.data)
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                    break
            # The loop also ends on a close without a close frame: a drop either way.
            reason = ws.exception()
            self.last_error = f"websocket closed (code {ws.close_code}" + (
                f", {_describe(reason)})" if reason else ")")

    async def _filter_events(self) -> None:
        """Ask for ``event_types`` only; without the filter everything still works."""
        if self._event_types is None:
            return
        try:
            await self._client.set_event_filter(self._event_types)
        except AriError as exc:
            if not self._filter_warned:
                self._filter_warned = True
                log.warning("ARI refused the event filter (%s): every event will be "
                            "parsed; an Asterisk older than 16.3 has no filters", exc)

    def _dispatch(self, data: str) -> None:
        try:
            obj = orjson.loads(data)
        except ValueError:
            log.warning("ARI sent a non-JSON event, ignored: %.200s", data)
            return
        if not isinstance(obj, dict):
            return
        try:
            event = parse_event(obj)
        except (TypeError, ValueError, KeyError):
            log.exception("cannot parse ARI event %.300s", data)
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("handler failed on ARI event %s", event.type)
