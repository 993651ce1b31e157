"""AMI through panoramisk: connection state, actions with deadlines, typed event hooks.

panoramisk reconnects by itself, but three of its habits need a fence (see
``docs/architecture.md``): an action sent while Asterisk is down never resolves (every
action here has a timeout), closing the manager triggers a reconnect (our subclass
stops that), and only ``async def`` handlers are safe to register.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from panoramisk import Manager

log = logging.getLogger(__name__)

AmiEvent = Mapping[str, str]
AmiHandler = Callable[[AmiEvent], Awaitable[None]]


class AmiError(Exception):
    """AMI is down, refused the login, or an action failed or timed out."""


class AmiTimeout(AmiError):
    """An action got no answer in time: Asterisk may still have done it."""


class _Manager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's Manager, minus the reconnect after we close it on purpose."""

    closing = False
    login_error = ""

    def login(self, future: asyncio.Future[Any]) -> bool:
        ok = bool(super().login(future))
        if not ok:
            response = future.result()
            self.login_error = (
                f"AMI login as {self.config['username']!r} refused: "
                f"{response.get('Message', 'no message')}; check asterisk.ami in the YAML "
                "against manager.conf"
            )
            log.error("%s", self.login_error)
        else:
            self.login_error = ""
        return ok

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closing:
            self._connected = False
            self.authenticated = False
            return
        super().connection_lost(exc)

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if self.closing:
            if not f.cancelled() and f.exception() is None:
                f.result()[0].close()
            return
        super().connection_made(f)


class AmiClient:
    """One AMI login, kept up; ``ready`` is True when connected and logged in."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        secret: str,
        *,
        action_timeout: float = 5.0,
        reconnect_s: int = 1,
    ) -> None:
        self._config: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": user,
            "secret": secret,
            "ping_delay": 5,
            "ping_interval": 5,
            "reconnect_timeout": reconnect_s,
            "log": logging.getLogger("pbxbrain.adapters.ami.panoramisk"),
        }
        self._timeout = action_timeout
        self._manager: _Manager | None = None
        self._handlers: list[tuple[str, AmiHandler]] = []
        self.last_error = "not connected yet"
        self.logins = 0

    @property
    def status(self) -> str:
        """``ok`` or what is wrong, for the health endpoint."""
        if self.ready:
            return "ok"
        m = self._manager
        if m is not None and m.login_error:
            return m.login_error
        return self.last_error

    @property
    def ready(self) -> bool:
        """Connected and authenticated."""
        m = self._manager
        return bool(m is not None and m._connected and m.authenticated)

    def on(self, pattern: str, handler: AmiHandler) -> None:
        """Call ``handler`` for each event whose name matches ``pattern`` (fnmatch)."""
        self._handlers.append((pattern, handler))
        if self._manager is not None:
            self._register(self._manager, pattern, handler)

    async def start(self) -> None:
        """Start connecting (in the background; reconnects forever).

        AMI sends events only when a handler was registered before: parsing every event
        of a busy Asterisk costs pbxbrain more CPU than routing its calls.
        """
        loop = asyncio.get_running_loop()
        manager = _Manager(
            loop=loop,
            events="on" if self._handlers else "off",
            on_login=self._logged_in,
            on_disconnect=self._disconnected,
            **self._config,
        )
        for pattern, handler in self._handlers:
            self._register(manager, pattern, handler)
        self._manager = manager
        manager.connect()

    async def close(self) -> None:
        """Log off and stop reconnecting."""
        m, self._manager = self._manager, None
        if m is None:
            return
        m.closing = True
        m.close()

    async def action(self, fields: Mapping[str, str], *, as_list: bool = False,
                     timeout_s: float | None = None) -> Any:
        """Send one action and wait for its response, at most ``timeout_s`` (default:
        ``action_timeout``) seconds; AmiTimeout when none came (it may still be done)."""
        m = self._manager
        if m is None or not self.ready:
            raise AmiError(f"AMI not connected ({self.last_error}); cannot send {fields!r}")
        try:
            future = m.send_action(dict(fields), as_list=as_list)
            timeout = self._timeout if timeout_s is None else timeout_s
            response = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise AmiTimeout(
                f"AMI action {fields.get('Action')} got no answer in {timeout:g} s"
            ) from exc
        if not as_list and getattr(response, "success", True) is False:
            raise AmiError(f"AMI action {fields.get('Action')} failed: "
                           f"{response.get('Message', response)}")
        return response

    async def ping(self) -> None:
        """Raise AmiError unless AMI answers a Ping."""
        await self.action({"Action": "Ping"})

    async def mix_monitor(self, channel: str, path: str, *, timeout_s: float = 1.0) -> None:
        """Record ``channel`` (name or ARI id) both ways into ``path`` (Asterisk's side:
        the extension picks the format); AmiError if Asterisk refuses (``No such
        channel``: it is gone), AmiTimeout if it did not answer in time."""
        await self.action({"Action": "MixMonitor", "Channel": channel, "File": path},
                          timeout_s=timeout_s)

    async def stop_mix_monitor(self, channel: str, *, timeout_s: float = 1.0) -> None:
        """Stop recording ``channel``: Asterisk closes the file before it answers."""
        await self.action({"Action": "StopMixMonitor", "Channel": channel},
                          timeout_s=timeout_s)

    def _logged_in(self, manager: Manager) -> None:
        if manager is not self._manager:
            return
        self.logins += 1
        self.last_error = ""
        log.info("AMI logged in (%s:%s)", self._config["host"], self._config["port"])

    def _disconnected(self, manager: Manager, exc: Exception | None) -> None:
        if manager is not self._manager:
            return
        self.last_error = f"AMI connection lost: {exc!r}"
        log.warning("%s; reconnecting", self.last_error)

    @staticmethod
    def _register(manager: Manager, pattern: str, handler: AmiHandler) -> None:
        async def callback(_manager: Manager, message: AmiEvent) -> None:
            try:
                await handler(message)
            except Exception:
                log.exception("AMI handler for %s failed", pattern)

        manager.register_event(pattern, callback)
