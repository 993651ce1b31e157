"""``pbxbrain route``: a dry run of the routing core, for ops.

It prints the plan ``routing.decide`` makes for one call, and why, from the config alone:
no Asterisk, no database (round-robin cursors are 0), no CRM (``--owner`` says who owns
the caller). ``--busy`` and ``--offline`` say which managers to treat as busy or with an
unregistered phone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from pbxbrain.config import Config, ConfigError, load_config
from pbxbrain.domain.model import Direction, InboundCall
from pbxbrain.domain.phone import normalize_caller
from pbxbrain.domain.plan import Facts
from pbxbrain.domain.routing import decide, explain, find_line, plan_to_json


def _ids(values: Iterable[str]) -> list[str]:
    """Staff ids from repeated and comma-separated options (``--busy a,b --busy c``)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _moment(at: str | None, dialed: str, config: Config) -> datetime:
    """``--at`` as an aware UTC datetime; a time without offset is read in the line's zone."""
    if at is None:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        found = find_line(dialed, config)
        schedule = found[1].schedule if found is not None else None
        zone = config.schedules[schedule].zone() if schedule is not None else UTC
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def route_main(  # noqa: PLR0917 (one parameter per command-line option, as cli.py passes them)
    config_path: str, caller: str, dialed: str, at: str | None, owner: str | None,
    busy: list[str], offline: list[str], as_json: bool, internal: bool,
) -> int:
    """Print the plan for a call from ``caller`` to ``dialed``; 0, or 2 on bad input."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"pbxbrain: fix {config_path} (pbxbrain check-config {config_path}) and retry",
              file=sys.stderr)
        return 2
    busy_ids, offline_ids = _ids(busy), _ids(offline)
    unknown = sorted({name for name in [*busy_ids, *offline_ids, *([owner] if owner else [])]
                      if name not in config.staff})
    if unknown:
        print(f"pbxbrain route: unknown staff id(s) {', '.join(unknown)}; staff has: "
              f"{', '.join(sorted(config.staff))}", file=sys.stderr)
        return 2
    try:
        now = _moment(at, dialed, config)
    except ValueError:
        print(f"pbxbrain route: --at {at!r} is not a date and time; write it like "
              f"2026-11-25T10:00+03:00", file=sys.stderr)
        return 2
    region = config.numbers.default_region or "ZZ"
    call = InboundCall(
        call_id="dry-run", channel_id="dry-run", caller=normalize_caller(caller, region),
        caller_raw=caller, dialed=dialed, at=now,
        direction=Direction.INTERNAL if internal else Direction.INBOUND,
    )
    facts = Facts(owner=owner, busy=frozenset(busy_ids), offline=frozenset(offline_ids))
    plan = decide(call, facts, config, now)
    if as_json:
        document = {"call": {"caller": call.caller, "dialed": dialed,
                             "direction": call.direction.value, "at": now.isoformat()},
                    "plan": plan_to_json(plan)}
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print(f"call from {call.caller} to {dialed} at {now.isoformat()}"
              f"{' (internal)' if internal else ''}")
        print(explain(plan))
    return 0
