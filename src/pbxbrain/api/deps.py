"""What the HTTP API needs from the daemon (``ApiDeps``) and what it keeps (``ApiState``).

Both live on the aiohttp application under typed ``web.AppKey``s.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from pbxbrain.adapters.recordings import RecordingDirectory
from pbxbrain.api.auth import TokenRegistry
from pbxbrain.api.events import EventBus, Subscription
from pbxbrain.api.idempotency import IdempotencyCache
from pbxbrain.api.ratelimit import RateLimiter
from pbxbrain.config import Config
from pbxbrain.ports import CallStore, ClickToCall, ContactBook, OutboxAdmin, RecordingIndex

__all__ = ["DEPS", "HEALTH", "STATE", "ApiDeps", "ApiState", "HealthProbe"]

#: ``component -> "ok" | what is wrong``; ``ready`` says whether calls can be taken.
HealthProbe = Callable[[], Awaitable[Mapping[str, str]]]


@dataclass(frozen=True, slots=True)
class ApiDeps:
    """Everything the API uses, built once by the daemon.

    ``clock`` (monotonic seconds) drives rate limits and idempotency expiry; tests inject
    one. ``heartbeat_s`` is the pause after which ``/v1/events`` sends a comment line.

    ``contacts`` is the built-in CRM (``/v1/contacts``, ``/v1/tasks``); None when the CRM
    is another one (those endpoints answer 409). ``outbox`` backs ``/v1/deliveries``
    (None: 409). ``on_contacts_changed`` is called after an import wrote contacts (forget
    cached lookups); ``on_delivery_retry`` after a delivery was made due again (wake the
    delivery worker).
    """

    config: Config
    health: HealthProbe
    store: CallStore
    recordings: RecordingIndex
    recording_files: RecordingDirectory
    click_to_call: ClickToCall
    events: EventBus
    clock: Callable[[], float] = time.monotonic
    heartbeat_s: float = 15.0
    contacts: ContactBook | None = None
    outbox: OutboxAdmin | None = None
    on_contacts_changed: Callable[[], None] | None = None
    on_delivery_retry: Callable[[], None] | None = None


@dataclass(slots=True)
class ApiState:
    """What the API keeps between requests: tokens, limits, idempotency, open streams."""

    tokens: TokenRegistry
    read_limit: RateLimiter
    originate_per_token: RateLimiter
    originate_per_manager: RateLimiter
    idempotency: IdempotencyCache
    originating: Counter[str] = field(default_factory=Counter)  # staff id -> in start()
    streams: Counter[str] = field(default_factory=Counter)  # token name -> open streams
    subscriptions: set[Subscription] = field(default_factory=set)

    @classmethod
    def build(cls, deps: ApiDeps) -> ApiState:
        """The state for a new application."""
        limits = deps.config.http.rate_limits
        return cls(
            tokens=TokenRegistry(deps.config.http.tokens),
            read_limit=RateLimiter(limits.read_per_token, clock=deps.clock),
            originate_per_token=RateLimiter(limits.originate_per_token, clock=deps.clock),
            originate_per_manager=RateLimiter(limits.originate_per_manager, clock=deps.clock),
            idempotency=IdempotencyCache(clock=deps.clock),
        )


HEALTH = web.AppKey[HealthProbe]("health")
DEPS = web.AppKey[ApiDeps]("deps")
STATE = web.AppKey[ApiState]("state")
