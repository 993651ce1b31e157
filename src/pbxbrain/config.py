"""Ops' YAML configuration: the pydantic models of it, and the only code that reads it.

``load_config(path)`` / ``parse_config(text)`` return a frozen ``Config`` or raise one
``ConfigError`` that lists *every* problem of the file, each with file, line, column, a path
like ``departments.sales.members[2]`` and a message that says what to do. Reading goes in
layers, so that one run reports everything:

1. The YAML is composed into nodes (PyYAML keeps ``start_mark`` on every node) by a loader
   that resolves only ``null``, ``true``/``false`` and merge keys (``<<: *anchor``). Every
   other plain scalar stays a string and pydantic converts it where a field wants a number or
   a date. So ``short: 0101`` stays ``"0101"`` (not octal), ``+74951234567:`` keeps its plus,
   ``09:00`` is not a sexagesimal number and ``default_region: NO`` is not ``False``.
2. The nodes become plain data; the node of every key and value is remembered by its path.
   A key given twice in one mapping is a problem (plain YAML silently keeps the last one).
3. ``${VAR}`` and ``${VAR:-default}`` in any string value are replaced from the environment
   (``:-`` also applies when the variable is empty); ``$${`` is a literal ``${``.
4. pydantic validates the data into frozen models with ``extra="forbid"`` everywhere; each
   error's ``loc`` is mapped back to its node (the key's node for an unknown key, the value's
   node otherwise, the nearest existing parent for a missing key).
5. Cross-references (who is in which department, which schedule a line uses, ...) are
   checked on the raw data, defensively, so they are reported even when an unrelated section
   has type errors.

Vocabulary: *staff* are the managers (people who take calls), keyed by a staff id; a
*department* groups managers; a *line* is an inbound number (DID) with its routing. A
manager's department is said only by ``departments.<id>.members``: staff entries have no
department field, so there is one source of truth (``Config.department_of``).
"""

from __future__ import annotations

import difflib
import functools
import itertools
import os
import re
import socket
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, time
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "AfterHours",
    "AmiConfig",
    "ApiToken",
    "AriConfig",
    "AsteriskConfig",
    "Bitrix24Crm",
    "BuiltinCrm",
    "ClickToCallConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "CrmConfig",
    "Department",
    "DepartmentStep",
    "HttpConfig",
    "Line",
    "ManagerStep",
    "MissedCallsConfig",
    "NumbersConfig",
    "OwnerFallback",
    "OwnerRoute",
    "OwnerStep",
    "RateLimits",
    "RecordingsConfig",
    "Region",
    "RegionRoute",
    "RegionStep",
    "RingAllStep",
    "RouteStep",
    "Schedule",
    "Scope",
    "Staff",
    "Strategy",
    "TimeRange",
    "VoicemailStep",
    "WebhookCrm",
    "Weekday",
    "check_config_main",
    "load_config",
    "normalize_number",
    "normalize_prefix",
    "parse_config",
]

# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------

_PathItem = str | int
_Path = tuple[_PathItem, ...]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration, located in the file.

    ``line`` and ``column`` are 1-based; they are None when the problem concerns the whole
    file (it cannot be read). ``path`` is like ``departments.sales.members[2]`` ("" for the
    whole document).
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def format_path(path: Iterable[_PathItem]) -> str:
    """Render a data path as ops read it: ``lines.+74951234567.route[0].department``."""
    out = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            out += f"[{item}]"
            continue
        text = str(item)
        if not re.fullmatch(r"[\w+\-]+", text):
            text = '"' + text.replace('"', '\\"') + '"'
        out += f".{text}" if out else text
    return out


# --------------------------------------------------------------------------------------------
# Phone numbers, ids and other small value types
# --------------------------------------------------------------------------------------------

_PARSE_REASONS = {
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def _example(region: str | None) -> str:
    number = phonenumbers.example_number(region) if region else None
    if number is None:
        return "+74951234567 (+, country code, number)"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_number(text: str, region: str | None = None) -> str:
    """Return ``text`` as a valid E.164 number (``+74951234567``) or raise ValueError.

    National forms (``8 (495) 123-45-67``) need ``region`` (``numbers.default_region``).
    """
    if re.search(r"[A-Za-z]", text):
        raise ValueError(f"'{text}' is not a phone number (it has letters); write it as "
                         f"{_example(region)}")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            national = region is None and not text.strip().startswith("+")
            reason = ("no country code: write it with + and the country code, or set "
                      "numbers.default_region" if national else "unknown country code")
        else:
            reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        raise ValueError(f"'{text}' is not a phone number ({reason}); write it as "
                         f"{_example(region)}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"'{text}' is not a valid phone number (wrong length or no such "
                         f"range); write it as {_example(region)}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_prefix(text: str, region: str | None = None) -> str:
    """Return a number prefix in international form (``+7800555``) or raise ValueError.

    A full valid number (in any form ``normalize_number`` accepts) is its own prefix; a
    shorter prefix must be written with ``+`` and a country calling code.
    """
    compact = re.sub(r"[\s().-]", "", text)
    try:
        return normalize_number(text, region)
    except ValueError:
        pass
    if not re.fullmatch(r"\+[1-9][0-9]{0,14}", compact):
        raise ValueError(f"'{text}' is neither a valid phone number nor a number prefix; write "
                         f"a full number like {_example(region)} or a prefix with + and the "
                         f"country code, like +7800")
    digits = compact[1:]
    if all(phonenumbers.region_code_for_country_code(int(digits[:size])) == "ZZ"
           for size in (1, 2, 3) if len(digits) >= size):
        raise ValueError(f"'{text}' does not start with a country calling code "
                         f"(+7, +1, +44, ...); write the prefix in international form")
    return compact


def _context_region(info: ValidationInfo) -> str | None:
    context = info.context
    if isinstance(context, Mapping):
        region = context.get("default_region")
        if isinstance(region, str):
            return region
    return None


def _validate_number(value: str, info: ValidationInfo) -> str:
    return normalize_number(value, _context_region(info))


def _validate_prefix(value: str, info: ValidationInfo) -> str:
    return normalize_prefix(value, _context_region(info))


def _check_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError(f"'{value}' is not a usable id; use letters, digits, '_', '-' or '.', "
                         f"starting with a letter or digit (e.g. ivanov, sales-spb)")
    return value


def _check_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"'{value}' is not a valid Asterisk name; use letters, digits, "
                         f"'_', '-' or '.'")
    return value


def _check_sound(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", value):
        raise ValueError(f"'{value}' is not an Asterisk sound name; write it without the "
                         f"extension, e.g. after-hours or custom/after-hours")
    return value


def _check_short(value: str) -> str:
    if not re.fullmatch(r"[0-9]{2,6}", value):
        raise ValueError(f"short number '{value}' must be 2 to 6 digits, written in quotes "
                         f"(e.g. short: \"101\")")
    return value


def _check_endpoint(value: str) -> str:
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*/[^\s&,()|]+", value):
        return value
    if "/" not in value and re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"'{value}' is not an Asterisk endpoint; write the technology and "
                         f"the resource, e.g. PJSIP/{value}")
    raise ValueError(f"'{value}' is not an Asterisk endpoint like PJSIP/101; it must not "
                     f"contain spaces, '&', ',', '|' or parentheses")


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"'{value}' is not an http(s) URL; write it like "
                         f"http://127.0.0.1:8088")
    return value


def _check_secret_url(value: SecretStr) -> SecretStr:
    parts = urlsplit(value.get_secret_value())
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError("expected the https:// URL of the inbound webhook, like "
                         "https://example.bitrix24.ru/rest/1/<token>/")
    return value


def _check_region(value: str) -> str:
    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"'{value}' is not a region code; use a two-letter ISO country code "
                         f"such as RU, KZ, BY or US")
    return region


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(value, sorted(available_timezones()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown time zone '{value}'{hint}; use a tz database name like "
                         f"Europe/Moscow") from None
    return value


def _check_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("expected the sha256 of the token as 64 hex digits, never the token "
                         "itself; make it with: printf %s 'THE-TOKEN' | sha256sum")
    return value.lower()


def _check_listen(value: str) -> str:
    host, port = _split_listen(value)
    if not host or port is None:
        raise ValueError(f"'{value}' is not host:port; write it like 127.0.0.1:8090 or "
                         f"[::1]:8090")
    return value


def _split_listen(value: str) -> tuple[str, int | None]:
    host, _, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else None
    return host, port


def _check_database(value: str) -> str:
    if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("expected a database URL starting with sqlite+aiosqlite:/// (a file "
                         "path follows) or postgresql+asyncpg://user:password@host/db")
    return value


def _check_absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError(f"'{value}' is not an absolute path; write it from /, e.g. "
                         f"/var/lib/pbxbrain/recordings")
    return value


def _none_if_empty(value: Any) -> Any:
    return None if value == "" else value  # ``${VAR:-}`` left empty: unset


def _check_absolute_or_none(value: Path | None) -> Path | None:
    return None if value is None else _check_absolute(value)


def _check_mixmonitor_path(value: Path) -> Path:
    text = str(value)
    if not text.isascii() or any(c in text for c in ",|;\r\n"):
        raise ValueError(f"'{value}' cannot be handed to Asterisk's MixMonitor (commas split "
                         "its arguments; AMI carries ASCII only); use a plain path such as "
                         "/var/spool/asterisk/recording")
    return value


def _empty_mapping_if_none(value: Any) -> Any:
    return {} if value is None else value


def _empty_list_if_none(value: Any) -> Any:
    return [] if value is None else value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Id = Annotated[str, AfterValidator(_check_id)]
Name = Annotated[str, AfterValidator(_check_name)]
SoundName = Annotated[str, AfterValidator(_check_sound)]
ShortNumber = Annotated[str, AfterValidator(_check_short)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
PhoneNumber = Annotated[str, AfterValidator(_validate_number)]
NumberPrefix = Annotated[str, AfterValidator(_validate_prefix)]
Port = Annotated[int, Field(ge=1, le=65535)]
SlaMinutes = Annotated[int, Field(ge=1, le=10_080)]  # a week at most


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# asterisk, database, http, numbers
# --------------------------------------------------------------------------------------------


class _Listening(_Model):
    """A server of pbxbrain's: ``listen`` is ``host:port``."""

    listen: str

    @property
    def host(self) -> str:
        """The host part of ``listen`` (brackets of an IPv6 address removed)."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        port = _split_listen(self.listen)[1]
        assert port is not None  # checked by the validator
        return port


class AriConfig(_Model):
    """Asterisk REST Interface: where it listens and the app pbxbrain registers as."""

    url: HttpUrl = "http://127.0.0.1:8088"
    user: Text
    password: SecretStr
    app: Name = "pbxbrain"


class AmiConfig(_Model):
    """Asterisk Manager Interface (device state, CDR events)."""

    host: Text = "127.0.0.1"
    port: Port = 5038
    user: Text
    secret: SecretStr


class AgiConfig(_Listening):
    """The FastAGI server, for dialplans that keep Asterisk in charge of the call.

    ``AGI(agi://<listen>/inbound,${EXTEN})`` hands a call to pbxbrain, which decides
    its route and runs it as dialplan applications (``Dial``, ``Playback``, ...); see
    ``asterisk-conf/extensions.conf``. ``enabled: false`` leaves the port closed (the
    dialplan's safety net then takes every such call).
    """

    enabled: bool = True
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:4573"


class AsteriskConfig(_Model):
    """How pbxbrain reaches its Asterisk node.

    ``trunk`` is the PJSIP endpoint towards the PSTN (outbound legs are
    ``PJSIP/<number>@<trunk>``); ``fallback_context`` is the dialplan context a call is
    handed back to when pbxbrain gives up on it (None: continue where the call came from).
    ``agi``: where pbxbrain takes calls the dialplan hands it by FastAGI.
    """

    ari: AriConfig
    ami: AmiConfig
    trunk: Name
    fallback_context: Name | None = None
    agi: Annotated[AgiConfig, BeforeValidator(_empty_mapping_if_none)] = AgiConfig()


Scope = Literal["originate", "callback", "read", "recordings", "contacts", "admin"]


class ApiToken(_Model):
    """An HTTP API client. Only the sha256 hex of its bearer token is stored."""

    name: Id
    sha256: Annotated[str, AfterValidator(_check_sha256)]
    scopes: tuple[Scope, ...] = Field(min_length=1)


class RateLimits(_Model):
    """Limits of the HTTP API, against toll fraud and runaway CRM scripts.

    ``*_per_token`` and ``*_per_manager`` are requests a minute (token buckets: that many at
    once, refilled evenly over the minute); ``originate_concurrent_per_manager`` is how many
    click-to-calls one manager may have in progress; ``event_streams_per_token`` how many
    ``/v1/events`` streams one token may hold open.
    """

    originate_per_token: Annotated[int, Field(ge=1, le=10_000)] = 30
    originate_per_manager: Annotated[int, Field(ge=1, le=1_000)] = 6
    originate_concurrent_per_manager: Annotated[int, Field(ge=1, le=100)] = 1
    read_per_token: Annotated[int, Field(ge=1, le=100_000)] = 600
    event_streams_per_token: Annotated[int, Field(ge=1, le=1_000)] = 5


class HttpConfig(_Listening):
    """The HTTP API server."""

    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:8090"
    tokens: Annotated[tuple[ApiToken, ...], BeforeValidator(_empty_list_if_none)] = ()
    rate_limits: Annotated[RateLimits, BeforeValidator(_empty_mapping_if_none)] = RateLimits()


class NumbersConfig(_Model):
    """Phone number handling.

    ``default_region`` (ISO code, e.g. RU) lets numbers be written in national form
    everywhere in this file and is how callers' numbers are read. ``dial_allowed`` lists the
    prefixes outbound calls may go to; empty (the default) allows no outbound calls.
    """

    default_region: Annotated[str, AfterValidator(_check_region)] | None = None
    dial_allowed: Annotated[tuple[NumberPrefix, ...], BeforeValidator(_empty_list_if_none)] = ()


# --------------------------------------------------------------------------------------------
# staff and departments
# --------------------------------------------------------------------------------------------


class Staff(_Model):
    """A manager: a person who takes calls, keyed by staff id in ``staff:``.

    There is deliberately no department field: membership is said only by
    ``departments.<id>.members`` (see ``Config.department_of``). ``phone`` is the desk or
    softphone endpoint (``PJSIP/101``), ``mobile`` an E.164 number rung through the trunk;
    at least one of the two is needed. ``crm_id`` is the manager's user id in the CRM, used
    to recognise the owner of a contact (defaults to the staff id).
    """

    name: Text
    short: ShortNumber | None = None
    phone: Endpoint | None = None
    mobile: PhoneNumber | None = None
    crm_id: Text | None = None

    @model_validator(mode="after")
    def _reachable(self) -> Staff:
        if self.phone is None and self.mobile is None:
            raise ValueError("nothing to ring: give this manager a phone: (e.g. PJSIP/101) "
                             "or a mobile: (e.g. +79161234567)")
        return self


Strategy = Literal["round_robin", "ring_all", "sequential", "sticky", "fixed"]
"""How a department's members are rung (the routing core implements them):
round_robin: one at a time, starting after the last one who got a call;
ring_all: all at once; sequential: one at a time, in the order of ``members``;
sticky: whoever last talked to this caller first, then round robin;
fixed: always the first free member in the order of ``members``."""


class Department(_Model):
    """A group of managers, keyed by department id in ``departments:``.

    ``members`` are staff ids (the only place membership is said; a manager belongs to at
    most one department); ``head`` is the staff id of the head, rung by ``owner.then: head``
    and responsible for missed calls. ``ring_seconds`` is how long each attempt rings;
    ``caller_id`` is the number shown to clients on outbound calls of this department.
    """

    name: Text | None = None
    short: ShortNumber | None = None
    members: Annotated[tuple[str, ...], BeforeValidator(_empty_list_if_none)] = ()
    head: str | None = None
    strategy: Strategy = "round_robin"
    ring_seconds: Annotated[int, Field(ge=1, le=600)] = 20
    caller_id: PhoneNumber | None = None


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------


class Weekday(IntEnum):
    """Days of the week, numbered like ``date.weekday()``."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6

    @property
    def label(self) -> str:
        """The short name used in the YAML (``mon``)."""
        return self.name.lower()


_DAY_NAMES: dict[str, Weekday] = {}
for _day, _full in zip(Weekday, ("monday", "tuesday", "wednesday", "thursday", "friday",
                                 "saturday", "sunday"), strict=True):
    _DAY_NAMES[_day.label] = _day
    _DAY_NAMES[_full] = _day

_END_OF_DAY = time.max


class TimeRange(_Model):
    """Open hours within one day, ``start <= t < end``; an end of 24:00 is ``time.max``."""

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end <= self.start:
            raise ValueError(f"{self} ends before it starts")
        return self

    def contains(self, moment: time) -> bool:
        """Is ``moment`` (a wall-clock time in the schedule's zone) within the range?"""
        return self.start <= moment and (moment < self.end or self.end == _END_OF_DAY)

    def __str__(self) -> str:
        end = "24:00" if self.end == _END_OF_DAY else self.end.strftime("%H:%M")
        return f"{self.start.strftime('%H:%M')}-{end}"


def _parse_days(spec: str) -> list[Weekday]:
    days: list[Weekday] = []
    for part in spec.split(","):
        names = [name.strip().lower() for name in part.split("-")]
        if len(names) > 2 or not all(name in _DAY_NAMES for name in names):
            raise ValueError(f"'{spec}' is not a set of days; write mon, tue, wed, thu, fri, "
                             f"sat or sun, ranges like mon-fri and lists like mon,wed,fri")
        first, last = _DAY_NAMES[names[0]], _DAY_NAMES[names[-1]]
        if last < first:
            wrapped = f"{first.label}-sun,mon" + (f"-{last.label}" if last != Weekday.MON else "")
            raise ValueError(f"'{part.strip()}' runs backwards; day ranges go from mon to sun, "
                             f"so write {wrapped}")
        days.extend(Weekday(number) for number in range(first, last + 1))
    return days


def _parse_clock(hours: str, minutes: str, *, end: bool) -> time | None:
    hour, minute = int(hours), int(minutes)
    if end and hour == 24 and minute == 0:
        return _END_OF_DAY
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)


def _parse_hours(text: str) -> tuple[TimeRange, ...]:
    if text.strip().lower() in ("closed", "off"):
        return ()
    ranges: list[TimeRange] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", part)
        start = _parse_clock(match[1], match[2], end=False) if match else None
        end = _parse_clock(match[3], match[4], end=True) if match else None
        if start is None or end is None:
            raise ValueError(f"'{part.strip()}' is not a time range; write HH:MM-HH:MM (e.g. "
                             f"09:00-18:00), several separated by commas, or closed")
        if end <= start:
            raise ValueError(f"'{part.strip()}' ends before it starts; the end must be after "
                             f"the start (24:00 is the end of the day; a night shift is two "
                             f"ranges on two days)")
        ranges.append(TimeRange(start=start, end=end))
    ranges.sort(key=lambda item: item.start)
    for before, after in itertools.pairwise(ranges):
        if after.start < before.end:
            raise ValueError(f"{before} and {after} overlap; merge them or fix the times")
    return tuple(ranges)


def _problems_error(problems: list[tuple[_Path, bool, str]]) -> PydanticCustomError:
    """One pydantic error that carries several located problems (see ``_Reader``)."""
    return PydanticCustomError("config_problems", "{summary}",
                               {"summary": problems[0][2], "problems": tuple(problems)})


def _parse_weekly(value: Any) -> Any:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        return value  # already parsed (built in code), or wrong: pydantic reports it
    problems: list[tuple[_Path, bool, str]] = []
    week: dict[Weekday, tuple[TimeRange, ...]] = dict.fromkeys(Weekday, ())
    given_by: dict[Weekday, str] = {}
    for key, hours in value.items():
        days: list[Weekday] = []
        try:
            days = _parse_days(key)
        except ValueError as exc:
            problems.append(((key,), True, str(exc)))
        ranges: tuple[TimeRange, ...] = ()
        if not isinstance(hours, str):
            problems.append(((key,), False, "expected hours like \"09:00-18:00\", "
                                            "\"09:00-13:00, 14:00-18:00\" or closed"))
        else:
            try:
                ranges = _parse_hours(hours)
            except ValueError as exc:
                problems.append(((key,), False, str(exc)))
        for day in days:
            if day in given_by and given_by[day] != key:
                problems.append(((key,), True, f"{day.label} is already given by "
                                               f"'{given_by[day]}'; each day may appear under "
                                               f"one key only"))
                break
            given_by[day] = key
            week[day] = ranges
    if problems:
        raise _problems_error(problems)
    return week


class Schedule(_Model):
    """Working hours of a line, keyed by schedule id in ``schedules:``.

    In the YAML, ``weekly`` maps day sets (``mon-fri``, ``sat``, ``mon,wed,fri``) to hours
    (``"09:00-18:00"``, ``"09:00-13:00, 14:00-18:00"`` or ``closed``). Parsed, it has all
    seven days (an unmentioned day is closed: no ranges), ranges sorted and disjoint.
    ``holidays`` are closed all day.
    """

    timezone: Annotated[str, AfterValidator(_check_timezone)]
    weekly: Annotated[Mapping[Weekday, tuple[TimeRange, ...]], BeforeValidator(_parse_weekly)]
    holidays: Annotated[tuple[date, ...], BeforeValidator(_empty_list_if_none)] = ()

    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)

    def hours(self, day: date) -> tuple[TimeRange, ...]:
        """Open ranges on ``day`` (a local date in ``zone()``); () when closed."""
        if day in self.holidays:
            return ()
        return self.weekly.get(Weekday(day.weekday()), ())


# --------------------------------------------------------------------------------------------
# lines and their routes
# --------------------------------------------------------------------------------------------

OwnerFallback = Literal["mobile", "department", "head"]


class OwnerRoute(_Model):
    """Ring the caller's owner (from the CRM) on their phone, then each of ``then`` in turn:
    the owner's mobile, the owner's department, the owner's department head."""

    then: Annotated[tuple[OwnerFallback, ...], BeforeValidator(_empty_list_if_none)] = ()


class OwnerStep(_Model):
    """Route step ``{owner: {then: [mobile, department, head]}}``; skipped without owner."""

    owner: Annotated[OwnerRoute, BeforeValidator(_empty_mapping_if_none)]


class DepartmentStep(_Model):
    """Route step ``{department: sales}``: ring the department with its strategy."""

    department: str


class ManagerStep(_Model):
    """Route step ``{manager: ivanov}``: ring one manager."""

    manager: str


class RegionRoute(_Model):
    """Pick the department of the region the caller's number belongs to (``regions:``);
    ``default`` when no region matches (None: go on with the next step)."""

    default: str | None = None


class RegionStep(_Model):
    """Route step ``{region: {default: sales}}``: regional routing."""

    region: Annotated[RegionRoute, BeforeValidator(_empty_mapping_if_none)]


class RingAllStep(_Model):
    """Route step ``{ring_all: [ivanov, petrov]}``: ring these managers at once."""

    ring_all: tuple[str, ...] = Field(min_length=1)


class VoicemailStep(_Model):
    """Route step ``{voicemail: sales}``: the caller leaves a message in this box (a
    department id or a staff id); ends the route."""

    voicemail: str


def _route_step_key(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _STEP_TAGS.get(type(value))
    if isinstance(value, Mapping) and len(value) == 1:
        key = next(iter(value))
        return key if isinstance(key, str) else None
    return None


RouteStep = Annotated[
    Annotated[OwnerStep, Tag("owner")]
    | Annotated[DepartmentStep, Tag("department")]
    | Annotated[ManagerStep, Tag("manager")]
    | Annotated[RegionStep, Tag("region")]
    | Annotated[RingAllStep, Tag("ring_all")]
    | Annotated[VoicemailStep, Tag("voicemail")],
    Discriminator(_route_step_key),
]
"""One step of a line's route: a mapping with exactly one key, which picks the model."""

_STEP_TAGS: dict[type[BaseModel], str] = {
    OwnerStep: "owner", DepartmentStep: "department", ManagerStep: "manager",
    RegionStep: "region", RingAllStep: "ring_all", VoicemailStep: "voicemail",
}


class AfterHours(_Model):
    """Outside the line's schedule: play ``prompt`` (an Asterisk sound), then take a message
    in the ``voicemail`` box (a department or staff id); neither given: hang up."""

    prompt: SoundName | None = None
    voicemail: str | None = None


class Line(_Model):
    """An inbound number (DID), keyed by its E.164 number in ``lines:``.

    ``source`` tags its calls (website, ads, ...); ``schedule`` names the working hours (None:
    always open); ``route`` is tried step by step; ``busy`` says what happens when the
    targets of a step are busy: ``next`` goes on with the next step at once, ``prompt``
    plays ``busy_prompt`` to the caller (once) and keeps trying. ``sla_minutes`` overrides
    ``missed_calls.sla_minutes`` for this line's missed-call tasks.
    """

    name: Text | None = None
    source: Text | None = None
    schedule: str | None = None
    route: tuple[RouteStep, ...] = Field(min_length=1)
    busy: Literal["next", "prompt"] = "next"
    # Asterisk ships "please hold while I try that extension"; record your own "your
    # manager is on a call, we are finding you another one" and name it custom/...
    busy_prompt: SoundName = "pls-hold-while-try"
    after_hours: AfterHours | None = None
    sla_minutes: SlaMinutes | None = None


class Region(_Model):
    """Callers of an area go to ``department`` (the ``region`` route step).

    The area is given by number ``prefixes`` (``+7812``: Saint Petersburg; the longest
    prefix matching a caller wins over every shorter one and over countries) and/or by
    ``countries``: ISO codes of the country phonenumbers assigns the caller's number to
    (``KZ``, ``BY``), for callers no prefix matched.
    """

    prefixes: tuple[NumberPrefix, ...] = ()
    countries: tuple[Annotated[str, AfterValidator(_check_region)], ...] = ()
    department: str

    @model_validator(mode="after")
    def _has_an_area(self) -> Region:
        if not self.prefixes and not self.countries:
            raise ValueError('a region needs prefixes: (e.g. ["+7812"]) or countries: '
                             "(e.g. [KZ, BY]), or both")
        return self


# --------------------------------------------------------------------------------------------
# crm, recordings, the whole
# --------------------------------------------------------------------------------------------


class BuiltinCrm(_Model):
    """No external CRM: contacts and their owners live in pbxbrain's own database."""

    kind: Literal["builtin"] = "builtin"


class WebhookCrm(_Model):
    """A CRM reached by signed webhooks: events go to ``url`` (HMAC with ``secret``);
    owner lookups to ``lookup_url`` (None: no lookups)."""

    kind: Literal["webhook"]
    url: HttpUrl
    secret: SecretStr
    lookup_url: HttpUrl | None = None


class Bitrix24Crm(_Model):
    """Bitrix24 through an inbound webhook URL (it contains the token, hence secret)."""

    kind: Literal["bitrix24"]
    webhook_url: Annotated[SecretStr, AfterValidator(_check_secret_url)]


CrmConfig = Annotated[BuiltinCrm | WebhookCrm | Bitrix24Crm, Field(discriminator="kind")]

class MissedCallsConfig(_Model):
    """Missed-call tasks: call the client back within ``sla_minutes`` of the miss, or of the
    next opening of the line's schedule when the miss was after hours. A line's own
    ``sla_minutes`` wins over this one."""

    sla_minutes: SlaMinutes = 15


class ClickToCallConfig(_Model):
    """Click-to-call (``POST /v1/calls``): the manager's desk phone rings for his
    department's ``ring_seconds``, then the client's number rings for
    ``client_ring_seconds``."""

    client_ring_seconds: Annotated[int, Field(ge=1, le=600)] = 45


RecordingFormat = Literal["wav", "wav49", "gsm", "ulaw", "alaw", "sln", "g722"]
RecordingMethod = Literal["mixmonitor", "bridge"]


class RecordingsConfig(_Model):
    """Where call recordings go and how long they are kept (``keep_days: 0`` is forever).

    ``method``: how Asterisk records a conversation. ``mixmonitor`` (through AMI, on the
    client's channel; ``wav`` only) costs Asterisk about 30 % less CPU per call than
    ``bridge`` (ARI's bridge recording turns the two-party bridge into a mixing
    conference); while AMI is down, and for other formats, calls are recorded the
    ``bridge`` way. ``asterisk_dir`` must be Asterisk's own recording spool
    (``astspooldir``/recording, on Asterisk's host), where MixMonitor writes and ARI
    serves the files: another directory loses every recording.

    ``local_dir``: that same spool as pbxbrain's host sees it, when pbxbrain runs beside
    Asterisk (the usual case; the path differs only when Asterisk runs in a chroot or a
    container). MixMonitor's files are then moved from there into ``dir`` (a rename on
    the same file system) instead of being fetched through ARI's HTTP and deleted: an
    hour-long call is a 57 MB WAV that would otherwise pass through pbxbrain's memory.
    pbxbrain needs to read it and rename files in it (e.g. its user in the ``asterisk``
    group, the spool group-writable); one it cannot use is logged at start and ARI used
    instead. Unset: fetched through ARI (Asterisk on another host).
    """

    dir: Annotated[Path, AfterValidator(_check_absolute)] = Path("/var/lib/pbxbrain/recordings")
    keep_days: Annotated[int, Field(ge=0)] = 1095
    format: RecordingFormat = "wav"
    method: RecordingMethod = "mixmonitor"
    asterisk_dir: Annotated[Path, AfterValidator(_check_absolute),
                            AfterValidator(_check_mixmonitor_path)] = Path(
        "/var/spool/asterisk/recording")
    local_dir: Annotated[Path | None, BeforeValidator(_none_if_empty),
                         AfterValidator(_check_absolute_or_none)] = None


class Config(_Model):
    """The whole configuration. Build it with ``load_config`` or ``parse_config``, which also
    check the cross-references (``Config.model_validate`` alone does not)."""

    node: Name = Field(default_factory=socket.gethostname)
    asterisk: AsteriskConfig
    database: Annotated[str, AfterValidator(_check_database)] = Field(
        default="sqlite+aiosqlite:////var/lib/pbxbrain/pbxbrain.db", repr=False)
    http: HttpConfig = HttpConfig()
    numbers: NumbersConfig = NumbersConfig()
    staff: Annotated[Mapping[Id, Staff], BeforeValidator(_empty_mapping_if_none)] = Field(
        default_factory=dict)
    departments: Annotated[Mapping[Id, Department], BeforeValidator(_empty_mapping_if_none)] = (
        Field(default_factory=dict))
    schedules: Annotated[Mapping[Id, Schedule], BeforeValidator(_empty_mapping_if_none)] = (
        Field(default_factory=dict))
    lines: Annotated[Mapping[PhoneNumber, Line], BeforeValidator(_empty_mapping_if_none)] = (
        Field(default_factory=dict))
    regions: Annotated[Mapping[Id, Region], BeforeValidator(_empty_mapping_if_none)] = Field(
        default_factory=dict)
    blacklist: Annotated[tuple[NumberPrefix, ...], BeforeValidator(_empty_list_if_none)] = ()
    crm: CrmConfig = BuiltinCrm()
    recordings: RecordingsConfig = RecordingsConfig()
    missed_calls: Annotated[MissedCallsConfig, BeforeValidator(_empty_mapping_if_none)] = (
        MissedCallsConfig())
    click_to_call: Annotated[ClickToCallConfig, BeforeValidator(_empty_mapping_if_none)] = (
        ClickToCallConfig())

    def department_of(self, staff_id: str) -> str | None:
        """The id of the department ``staff_id`` is a member of, or None."""
        return self._membership.get(staff_id)

    @functools.cached_property
    def _membership(self) -> Mapping[str, str]:
        # Built once per Config (it is frozen): routing asks this on every decision.
        return {member: department_id for department_id, department in
                self.departments.items() for member in department.members}


# --------------------------------------------------------------------------------------------
# Reading: YAML nodes -> data -> environment -> pydantic -> cross-references
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader resolving only null, true/false and merge keys; the rest stays a string."""


_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                              ["~", "n", "N", ""])
_Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])

_ENV_RE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")
_SECRET_KEYS = frozenset({"password", "secret", "webhook_url", "database", "sha256"})
_YAML_HINTS = {
    "mapping values are not allowed here": "a value contains ': ' or the indentation is off; "
                                           "quote the value or fix the indentation",
    "found character '\\t' that cannot start any token": "YAML does not allow tabs; indent "
                                                        "with spaces",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 60 else f"'{value[:57]}...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _listing(names: Iterable[str], limit: int = 12) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _as_map(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` from a type, as pydantic's ``loc`` does."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if _is_union(tp):
            members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _union_tags(tp: Any) -> dict[str, Any]:
    """Tag -> member of a discriminated union (``Tag`` metadata or a ``kind`` literal)."""
    tags: dict[str, Any] = {}
    for arg in typing.get_args(tp):
        explicit = [meta.tag for meta in typing.get_args(arg)[1:] if isinstance(meta, Tag)] \
            if typing.get_origin(arg) is Annotated else []
        member = _unwrap(arg)
        if explicit:
            tags[explicit[0]] = member
        elif isinstance(member, type) and issubclass(member, BaseModel) \
                and "kind" in member.model_fields:
            for value in typing.get_args(member.model_fields["kind"].annotation):
                tags[str(value)] = member
    return tags


@dataclass(frozen=True, slots=True)
class _Loc:
    """A pydantic ``loc`` resolved against the models: the data path (union tags removed),
    the model the last item was looked up in, the type found there, and whether the error
    is about a mapping key (``[key]``)."""

    path: _Path
    model: type[BaseModel] | None
    tp: Any
    at_key: bool


def _resolve_loc(loc: Sequence[_PathItem]) -> _Loc:
    tp: Any = Config
    path: list[_PathItem] = []
    model: type[BaseModel] | None = None
    at_key = False
    for item in loc:
        if item == "[key]":
            at_key = True
            continue
        tp = _unwrap(tp)
        if _is_union(tp) and isinstance(item, str) and item in (tags := _union_tags(tp)):
            tp = tags[item]
            continue
        model = None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            model = tp
            field = tp.model_fields.get(str(item))
            tp = field.annotation if field is not None else None
        else:
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin in (dict, Mapping) and len(args) == 2:
                tp = args[1]
            elif origin in (tuple, list) and args:
                tp = args[0]
            else:
                tp = None
        path.append(item)
    return _Loc(tuple(path), model, _unwrap(tp), at_key)


class _Reader:
    """Reads one YAML text into a Config, collecting every problem on the way."""

    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        self.nodes: dict[_Path, tuple[yaml.Node | None, yaml.Node]] = {}
        self.problems: list[ConfigProblem] = []
        self.broken: set[_Path] = set()  # paths already reported (env): no second error
        self.from_env: set[_Path] = set()  # values that came from the environment: never echo

    # -- reporting ---------------------------------------------------------------------------

    def _node(self, path: _Path, at_key: bool) -> yaml.Node | None:
        entry = self.nodes.get(path)
        if entry is not None:
            key_node, value_node = entry
            return key_node if at_key and key_node is not None else value_node
        while path:  # a missing key: point at the line that names its nearest parent
            path = path[:-1]
            entry = self.nodes.get(path)
            if entry is not None:
                return entry[0] or entry[1]
        return None

    def add(self, path: _Path, message: str, *, at_key: bool = False) -> None:
        """Record a problem about the value (or the key) at ``path``."""
        node = self._node(path, at_key)
        mark = node.start_mark if node is not None else None
        self.add_at(mark, format_path(path), message)

    def add_at(self, mark: yaml.Mark | None, path: str, message: str) -> None:
        """Record a problem at a YAML mark."""
        problem = ConfigProblem(self.filename, mark.line + 1 if mark else None,
                                mark.column + 1 if mark else None, path, message)
        if problem not in self.problems:
            self.problems.append(problem)

    def line_of(self, path: _Path) -> str:
        """``line N`` of the entry at ``path``, for messages that point at another place."""
        node = self._node(path, True)
        return f"line {node.start_mark.line + 1}" if node is not None else format_path(path)

    # -- 1 and 2: YAML to data ---------------------------------------------------------------

    def compose(self, text: str) -> Any:
        """Return the document as plain data (None when there is nothing usable)."""
        loader = _Loader(text)
        try:
            try:
                root = loader.get_single_node()
            except yaml.MarkedYAMLError as exc:
                problem = exc.problem or "cannot read the YAML"
                hint = _YAML_HINTS.get(problem, "check the indentation and the quotes")
                start, mark = exc.context_mark, exc.problem_mark or exc.context_mark
                if exc.context and problem.startswith("but "):
                    problem = f"{exc.context}, {problem}"
                elif exc.context and start and mark and start.line != mark.line:
                    problem += (f" ({exc.context} that starts at line {start.line + 1}, "
                                f"column {start.column + 1})")
                self.add_at(mark, "", f"YAML syntax error: {problem}; {hint}")
                return None
            except yaml.YAMLError as exc:
                self.add_at(None, "", f"YAML error: {exc}")
                return None
            if root is None:
                self.add_at(None, "", "the file is empty; expected a mapping with sections "
                                      "like asterisk:, staff:, departments:, lines:")
                return None
            if not isinstance(root, yaml.MappingNode):
                self.add_at(root.start_mark, "", "expected a mapping of sections (asterisk:, "
                                                 "staff:, ...) at the top of the file")
                return None
            self.nodes[()] = (None, root)
            return self._build(loader, root, (), set())
        finally:
            loader.dispose()

    def _build(self, loader: _Loader, node: yaml.Node, path: _Path, active: set[int]) -> Any:
        if id(node) in active:
            self.add(path, "an alias refers to itself; remove the recursion")
            return None
        if isinstance(node, yaml.ScalarNode):
            try:
                return loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.add(path, f"cannot read this value: {getattr(exc, 'problem', exc)}")
                return None
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.nodes[(*path, index)] = (None, child)
                items.append(self._build(loader, child, (*path, index), active))
            return items
        assert isinstance(node, yaml.MappingNode)
        own_keys = {id(key) for key, _ in node.value}
        try:
            loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.add(path, f"cannot merge here: {getattr(exc, 'problem', exc)}")
        result: dict[Any, Any] = {}
        own_seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.add_at(key_node.start_mark, format_path(path),
                            "a key must be plain text, not a list or a mapping")
                continue
            key = self._build(loader, key_node, path, active)
            if isinstance(key, list | dict):
                continue
            if id(key_node) in own_keys:
                if key in own_seen:
                    self.add_at(key_node.start_mark, format_path((*path, key)),
                                f"'{key}' is given twice in this mapping (first at line "
                                f"{own_seen[key].start_mark.line + 1}); YAML would keep only "
                                f"the last one — merge them or remove one")
                own_seen[key] = key_node
            self.nodes[(*path, key)] = (key_node, value_node)
            result[key] = self._build(loader, value_node, (*path, key), active)
        return result

    # -- 3: environment ----------------------------------------------------------------------

    def substitute(self, data: Any, path: _Path = ()) -> Any:
        """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value of ``data``."""
        if isinstance(data, dict):
            return {key: self.substitute(value, (*path, key)) for key, value in data.items()}
        if isinstance(data, list):
            return [self.substitute(value, (*path, index)) for index, value in enumerate(data)]
        if not isinstance(data, str) or "${" not in data:
            return data
        missing: list[str] = []
        malformed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal malformed
            if match[0] == "$${":
                return "${"
            name, default = match[1], match[2]
            if name is None:
                malformed = True
                return match[0]
            value = self.env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                missing.append(name)
                return match[0]
            return value

        result = _ENV_RE.sub(replace, data)
        self.from_env.add(path)
        if malformed:
            self.broken.add(path)
            self.add(path, "'${' must start ${NAME} or ${NAME:-default} (NAME: letters, digits "
                           "and _); write $${ for a literal ${")
        for name in missing:
            self.broken.add(path)
            self.add(path, f"environment variable {name} is not set; set it where pbxbrain "
                           f"runs (e.g. the service's EnvironmentFile) or write "
                           f"${{{name}:-default}}")
        return result

    # -- 4: pydantic -------------------------------------------------------------------------

    def validate(self, data: Any) -> Config | None:
        """Validate into a Config; on errors record them and return None."""
        numbers = _as_map(data.get("numbers")) if isinstance(data, Mapping) else {}
        region = numbers.get("default_region")
        region = region.upper() if isinstance(region, str) else None
        context = {"default_region": region if region in phonenumbers.SUPPORTED_REGIONS else None}
        try:
            return Config.model_validate(data, context=context)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                loc = error["loc"]
                if error["type"] == "too_short" and any(
                        len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc
                        for other in errors):
                    continue  # pydantic counts only the valid items; the bad one is reported
                self._report_error(error["type"], loc, error.get("ctx") or {},
                                   error["msg"], error.get("input"))
            return None

    def _report_error(self, kind: str, raw_loc: Sequence[_PathItem], ctx: Mapping[str, Any],
                      msg: str, value: Any) -> None:
        loc = _resolve_loc(raw_loc)
        path = loc.path
        if any(path[: len(broken)] == broken for broken in self.broken):
            return
        if kind == "config_problems":
            for sub_path, at_key, message in ctx["problems"]:
                self.add((*path, *sub_path), message, at_key=at_key)
            return
        secret = path in self.from_env or bool(path and path[-1] in _SECRET_KEYS)
        quiet = secret or kind in ("too_short", "string_too_short")
        got = "" if quiet else f", got {_describe(value)}"
        if kind == "extra_forbidden":
            allowed = sorted(loc.model.model_fields) if loc.model else []
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.add(path, f"unknown key '{path[-1]}'{hint}; allowed here: "
                               f"{_listing(allowed, limit=20)}",
                     at_key=True)
        elif kind == "missing":
            self.add(path, f"missing required key '{path[-1]}'; add {path[-1]}: here")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            self._report_union(kind, loc, ctx, value)
        elif kind == "value_error":
            self.add(path, str(ctx.get("error", msg)), at_key=loc.at_key)
        else:
            self.add(path, _type_message(kind, ctx, msg) + got, at_key=loc.at_key)

    def _report_union(self, kind: str, loc: _Loc, ctx: Mapping[str, Any], value: Any) -> None:
        tags = _listing(_union_tags(loc.tp))
        discriminator = str(ctx.get("discriminator", ""))
        if discriminator.startswith("'"):  # a field such as kind
            field = discriminator.strip("'")
            if kind == "union_tag_invalid":
                self.add((*loc.path, field), f"unknown {field} '{ctx.get('tag')}'; expected one "
                                             f"of: {tags}")
            elif isinstance(value, Mapping):
                self.add(loc.path, f"missing required key '{field}'; expected one of: {tags}")
            else:
                self.add(loc.path, f"expected a mapping with {field}: ({tags}), got "
                                   f"{_describe(value)}")
        elif kind == "union_tag_invalid":
            tag = str(ctx.get("tag"))
            close = difflib.get_close_matches(tag, list(_union_tags(loc.tp)), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.add((*loc.path, tag), f"unknown route step '{tag}'{hint}; a step is one of: "
                                       f"{tags}", at_key=True)
        else:
            self.add(loc.path, f"a route step is a mapping with exactly one key, one of: "
                               f"{tags} (e.g. - department: sales), got {_describe(value)}")


_TYPE_MESSAGES = {
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "date_type": "expected a date like 2027-01-01",
    "date_parsing": "expected a date like 2027-01-01",
    "date_from_datetime_parsing": "expected a date like 2027-01-01",
    "date_from_datetime_inexact": "expected a date like 2027-01-01",
    "time_type": "expected a time like 09:00",
    "time_parsing": "expected a time like 09:00",
    "dict_type": "expected a mapping of key: value pairs",
    "mapping_type": "expected a mapping of key: value pairs",
    "model_type": "expected a mapping of key: value pairs",
    "model_attributes_type": "expected a mapping of key: value pairs",
    "tuple_type": "expected a list, like [a, b] or one '- item' per line",
    "list_type": "expected a list, like [a, b] or one '- item' per line",
    "path_type": "expected a file system path",
    "string_too_short": "must not be empty",
}


def _type_message(kind: str, ctx: Mapping[str, Any], msg: str) -> str:
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}"
    if kind == "too_short":
        count = ctx.get("min_length")
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    bounds = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most"),
              "greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    return msg[0].lower() + msg[1:] if msg else kind


# -- 5: cross-references ---------------------------------------------------------------------


class _References:
    """Checks that ids used in one place exist in another, on the raw data, defensively:
    anything that is not of the expected shape is skipped (pydantic reports it)."""

    def __init__(self, data: Mapping[Any, Any], reader: _Reader) -> None:
        self.reader = reader
        self.data = data
        self.staff = _as_map(data.get("staff"))
        self.departments = _as_map(data.get("departments"))
        self.schedules = _as_map(data.get("schedules"))
        self.regions = _as_map(data.get("regions"))
        region = _as_map(data.get("numbers")).get("default_region")
        self.region = region.upper() if isinstance(region, str) and \
            region.upper() in phonenumbers.SUPPORTED_REGIONS else None

    def check(self) -> None:
        """Run every check."""
        self._ids_apart()
        self._memberships()
        self._unique_values("short", "short number", "short numbers must be unique across "
                                                     "staff and departments",
                            ("staff", "departments"))
        self._unique_values("crm_id", "crm_id", "each manager has their own CRM user",
                            ("staff",))
        self._lines()
        self._regions()
        self._tokens()

    def _unknown(self, path: _Path, what: str, value: str, section: str,
                 known: Iterable[Any]) -> None:
        names = [str(name) for name in known]
        close = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        has = f"{section} has: {_listing(names)}" if names else f"{section}: is empty"
        self.reader.add(path, f"unknown {what} '{value}'{hint}; {has} — add '{value}' under "
                              f"{section}: or remove it here")

    def _staff_ref(self, path: _Path, value: Any, what: str = "manager") -> None:
        if isinstance(value, str) and value not in self.staff:
            self._unknown(path, what, value, "staff", self.staff)

    def _department_ref(self, path: _Path, value: Any) -> None:
        if isinstance(value, str) and value not in self.departments:
            self._unknown(path, "department", value, "departments", self.departments)

    def _box_ref(self, path: _Path, value: Any) -> None:
        if isinstance(value, str) and value not in self.staff and value not in self.departments:
            self.reader.add(path, f"unknown voicemail box '{value}'; it must be a department "
                                  f"({_listing(map(str, self.departments)) or 'none'}) or a "
                                  f"manager ({_listing(map(str, self.staff)) or 'none'})")

    def _ids_apart(self) -> None:
        for department_id in self.departments:
            if department_id in self.staff:
                self.reader.add(("departments", department_id),
                                f"'{department_id}' is both a staff id and a department id; "
                                f"rename one so that references like voicemail: "
                                f"{department_id} are not ambiguous", at_key=True)

    def _memberships(self) -> None:
        member_of: dict[str, _Path] = {}
        for department_id, entry in self.departments.items():
            department = _as_map(entry)
            self._staff_ref(("departments", department_id, "head"), department.get("head"))
            members = department.get("members")
            if not isinstance(members, list):
                continue
            here: set[str] = set()
            for index, member in enumerate(members):
                path: _Path = ("departments", department_id, "members", index)
                if not isinstance(member, str):
                    continue
                if member not in self.staff:
                    self._staff_ref(path, member)
                elif member in here:
                    self.reader.add(path, f"'{member}' is listed twice in this department; "
                                          f"remove one")
                elif member in member_of:
                    first = member_of[member]
                    where = self.reader.line_of(first)
                    self.reader.add(path, f"manager '{member}' is already a member of "
                                          f"department '{first[1]}' ({where}); a manager "
                                          f"belongs to one department only — remove "
                                          f"'{member}' from one of them")
                else:
                    member_of[member] = path
                here.add(member)

    def _unique_values(self, field: str, what: str, rule: str, sections: Sequence[str]) -> None:
        first: dict[str, _Path] = {}
        for section in sections:
            for entry_id, entry in _as_map(self.data.get(section)).items():
                value = _as_map(entry).get(field)
                if not isinstance(value, str) or not value:
                    continue
                path: _Path = (section, entry_id, field)
                if value in first:
                    other = first[value]
                    self.reader.add(path, f"{what} {value} is already used by "
                                          f"{format_path(other[:2])} "
                                          f"({self.reader.line_of(other)}); {rule}")
                else:
                    first[value] = path

    def _lines(self) -> None:
        numbers: dict[str, Any] = {}
        for key, entry in _as_map(self.data.get("lines")).items():
            if isinstance(key, str):
                try:
                    number = normalize_number(key, self.region)
                except ValueError:
                    number = None
                if number is not None and number in numbers:
                    first = numbers[number]
                    where = self.reader.line_of(("lines", first))
                    self.reader.add(("lines", key), f"'{key}' is the same number as '{first}' "
                                                    f"({where}); give each line once",
                                    at_key=True)
                elif number is not None:
                    numbers[number] = key
            line = _as_map(entry)
            schedule = line.get("schedule")
            if isinstance(schedule, str) and schedule not in self.schedules:
                self._unknown(("lines", key, "schedule"), "schedule", schedule, "schedules",
                              self.schedules)
            route = line.get("route")
            for index, step in enumerate(route if isinstance(route, list) else []):
                self._step(("lines", key, "route", index), step)
            after_hours = line.get("after_hours")
            if after_hours is not None and line.get("schedule") is None:
                self.reader.add(("lines", key, "after_hours"), "after_hours: has no effect "
                                "without a schedule: — add schedule: <id> to this line or "
                                "remove after_hours:", at_key=True)
            self._box_ref(("lines", key, "after_hours", "voicemail"),
                          _as_map(after_hours).get("voicemail"))

    def _step(self, path: _Path, step: Any) -> None:
        if not isinstance(step, Mapping) or len(step) != 1:
            return
        ((kind, value),) = step.items()
        where: _Path = (*path, kind)
        if kind == "department":
            self._department_ref(where, value)
        elif kind == "manager":
            self._staff_ref(where, value)
        elif kind == "region":
            self._department_ref((*where, "default"), _as_map(value).get("default"))
        elif kind == "ring_all" and isinstance(value, list):
            for index, member in enumerate(value):
                self._staff_ref((*where, index), member)
        elif kind == "voicemail":
            self._box_ref(where, value)

    def _regions(self) -> None:
        owner: dict[str, _Path] = {}
        for region_id, entry in self.regions.items():
            region = _as_map(entry)
            self._department_ref(("regions", region_id, "department"), region.get("department"))
            prefixes = region.get("prefixes")
            for index, prefix in enumerate(prefixes if isinstance(prefixes, list) else []):
                if not isinstance(prefix, str):
                    continue
                try:
                    normal = normalize_prefix(prefix, self.region)
                except ValueError:
                    continue
                self._claim_area(owner, f"prefix {normal}",
                                 ("regions", region_id, "prefixes", index))
            countries = region.get("countries")
            for index, country in enumerate(countries if isinstance(countries, list) else []):
                if isinstance(country, str):
                    self._claim_area(owner, f"country {country.upper()}",
                                     ("regions", region_id, "countries", index))

    def _claim_area(self, owner: dict[str, _Path], area: str, path: _Path) -> None:
        """A prefix or a country belongs to one region: the first one that names it."""
        first = owner.setdefault(area, path)
        if first is not path:
            self.reader.add(path, f"{area} is already in region '{first[1]}' "
                                  f"({self.reader.line_of(first)}); a {area.split(maxsplit=1)[0]} "
                                  f"belongs to one region")

    def _tokens(self) -> None:
        tokens = _as_map(self.data.get("http")).get("tokens")
        seen: dict[str, _Path] = {}
        for index, token in enumerate(tokens if isinstance(tokens, list) else []):
            name = _as_map(token).get("name")
            if not isinstance(name, str):
                continue
            path: _Path = ("http", "tokens", index, "name")
            if name in seen:
                self.reader.add(path, f"token name '{name}' is already used "
                                      f"({self.reader.line_of(seen[name])}); names must differ")
            else:
                seen[name] = path


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _sort_key(problem: ConfigProblem) -> tuple[int, int]:
    return (problem.line or 0, problem.column or 0)


def parse_config(text: str, filename: str = "<config>",
                 env: Mapping[str, str] | None = None) -> Config:
    """Parse YAML ``text`` into a Config, or raise ConfigError listing every problem.

    ``env`` (default: ``os.environ``) supplies ``${VAR}`` values; ``filename`` only names the
    file in problems.
    """
    reader = _Reader(filename, os.environ if env is None else env)
    data = reader.compose(text)
    config = None
    if isinstance(data, Mapping):
        data = reader.substitute(data)
        config = reader.validate(data)
        _References(data, reader).check()
    if reader.problems or config is None:
        raise ConfigError(sorted(reader.problems, key=_sort_key))
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at ``path`` into a Config, or raise ConfigError (see parse_config)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(name, None, None, "", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(name, None, None, "",
                                         f"not UTF-8 text (bad byte at offset {exc.start}); "
                                         f"save the file as UTF-8")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, None, "",
                                         f"cannot read the file: {exc.strerror}")]) from None
    return parse_config(text, filename=name, env=env)


def check_config_main(path: str) -> int:
    """``pbxbrain check-config FILE``: print a summary (exit 0) or every problem (exit 1)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"{count} problem{'s' if count != 1 else ''} in {path}; nothing was applied — fix "
              f"them and run `pbxbrain check-config {path}` again", file=sys.stderr)
        return 1
    print(f"OK: {path}: {len(config.staff)} staff, {len(config.departments)} departments, "
          f"{len(config.lines)} lines")
    return 0
