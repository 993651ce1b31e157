"""Tests of pbxbrain.config: the example passes; every problem is found, located and explained.

Line and column numbers are 1-based and written out by hand from the YAML texts below.
"""

from __future__ import annotations

import textwrap
from datetime import date, time
from pathlib import Path

import pytest

from pbxbrain.config import (
    Config,
    ConfigError,
    ConfigProblem,
    DepartmentStep,
    ManagerStep,
    OwnerStep,
    RegionStep,
    RingAllStep,
    TimeRange,
    VoicemailStep,
    WebhookCrm,
    Weekday,
    check_config_main,
    load_config,
    normalize_number,
    normalize_prefix,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
EXAMPLE_ENV = {"PBXBRAIN_ARI_PASSWORD": "ari-pw", "PBXBRAIN_AMI_SECRET": "ami-secret"}

# Four lines every small case starts with, so that a case's own lines start at line 5.
HEAD = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
"""

Located = tuple[int | None, int | None, str]


def problems_of(text: str, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    """Parse ``text`` expecting a ConfigError; return its problems."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="config.yaml", env=env or {})
    return caught.value.problems


def located(problems: list[ConfigProblem]) -> list[Located]:
    return [(problem.line, problem.column, problem.path) for problem in problems]


def parse(body: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(HEAD + textwrap.dedent(body), filename="config.yaml", env=env or {})


# --- the example ------------------------------------------------------------------------------


def test_given_example_config_and_its_secrets_when_loaded_then_it_passes() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV)

    assert config.node == "pbx1"
    assert config.asterisk.ari.password.get_secret_value() == "ari-pw"
    assert config.asterisk.ami.secret.get_secret_value() == "ami-secret"
    assert config.database == "sqlite+aiosqlite:////var/lib/pbxbrain/pbxbrain.db"
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8090)
    assert [token.name for token in config.http.tokens] == ["crm", "website"]
    assert sorted(config.staff) == ["ivanov", "kuznetsov", "petrov", "smirnova"]
    assert config.departments["sales"].members == ("ivanov", "petrov")
    assert config.department_of("smirnova") == "spb"
    assert config.department_of("kuznetsov") is None  # head of both, member of none
    assert sorted(config.lines) == ["+74951234567", "+74959876543", "+78121234567"]
    assert config.lines["+74951234567"].route == (
        OwnerStep.model_validate({"owner": {"then": ["mobile", "department", "head"]}}),
        DepartmentStep(department="sales"),
    )
    assert config.schedules["office"].weekly[Weekday.SAT] == (
        TimeRange(start=time(10), end=time(14)),)
    assert config.regions["spb"].prefixes == ("+7812", "+7813")
    assert config.blacklist == ("+79000000000", "+7800555")


def test_given_example_config_without_its_secrets_when_loaded_then_both_are_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, env={})

    assert [(p.path, p.message.split(";")[0]) for p in caught.value.problems] == [
        ("asterisk.ari.password", "environment variable PBXBRAIN_ARI_PASSWORD is not set"),
        ("asterisk.ami.secret", "environment variable PBXBRAIN_AMI_SECRET is not set"),
    ]


# --- everything wrong at once -----------------------------------------------------------------

BROKEN = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
staff:
  ivanov: {name: Ivan Ivanov, short: "101", phone: PJSIP/101}
  petrov: {name: Petr Petrov, short: "102", phone: PJSIP/102}
departments:
  sales:
    members: [ivanov, petrov, sidorov]
    ring_seconds: twenty
    colour: blue
  spb:
    members: [petrov]
schedules:
  office:
    timezone: Europe/Moscow
    weekly:
      mon-fri: "09:00-18:00"
      sat: "14:00-10:00"
lines:
  "+74951234567":
    schedule: office
    route: [{department: sales}]
"""


def test_given_config_with_five_kinds_of_mistake_then_one_run_reports_each_where_it_is() -> None:
    problems = problems_of(BROKEN)

    assert located(problems) == [
        (10, 31, "departments.sales.members[2]"),
        (11, 19, "departments.sales.ring_seconds"),
        (12, 5, "departments.sales.colour"),
        (14, 15, "departments.spb.members[0]"),
        (20, 12, "schedules.office.weekly.sat"),
    ]
    messages = [problem.message for problem in problems]
    assert messages[0] == ("unknown manager 'sidorov'; staff has: ivanov, petrov — add "
                           "'sidorov' under staff: or remove it here")
    assert messages[1] == "expected a whole number, got 'twenty'"
    assert messages[2].startswith("unknown key 'colour'; allowed here: caller_id, head, members,")
    assert messages[3] == ("manager 'petrov' is already a member of department 'sales' "
                           "(line 10); a manager belongs to one department only — remove "
                           "'petrov' from one of them")
    assert messages[4].startswith("'14:00-10:00' ends before it starts")


def test_given_broken_config_then_error_text_has_one_rendered_line_per_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BROKEN, filename="config.yaml", env={})

    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("config.yaml:10:31: departments.sales.members[2]: unknown manager")
    assert lines[4].startswith("config.yaml:20:12: schedules.office.weekly.sat: '14:00-10:00'")


# --- one mistake at a time --------------------------------------------------------------------

CASES: list[tuple[str, str, Located, str]] = [
    (
        "missing env var",
        'database: "${NO_SUCH_VAR}"\n',
        (5, 11, "database"),
        "environment variable NO_SUCH_VAR is not set",
    ),
    (
        "bad phone number",
        'staff:\n  ivanov: {name: Ivan, mobile: "+7916123"}\n',
        (6, 32, "staff.ivanov.mobile"),
        "'+7916123' is not a valid phone number",
    ),
    (
        "national number without default_region",
        'staff:\n  ivanov: {name: Ivan, mobile: "89161234567"}\n',
        (6, 32, "staff.ivanov.mobile"),
        "no country code: write it with + and the country code, or set numbers.default_region",
    ),
    (
        "bad time zone",
        "schedules:\n  office:\n    timezone: Europe/Moskow\n"
        '    weekly: {mon-fri: "09:00-18:00"}\n',
        (7, 15, "schedules.office.timezone"),
        "unknown time zone 'Europe/Moskow' (did you mean 'Europe/Moscow'?)",
    ),
    (
        "duplicate short number",
        'staff:\n  ivanov: {name: Ivan, short: "101", phone: PJSIP/101}\n'
        'departments:\n  sales: {short: "101", members: [ivanov]}\n',
        (8, 18, "departments.sales.short"),
        "short number 101 is already used by staff.ivanov (line 6)",
    ),
    (
        "unknown route step key",
        'departments: {sales: {}}\nlines:\n  "+74951234567":\n'
        "    route: [{department: sales}, {departmnt: sales}]\n",
        (8, 35, 'lines.+74951234567.route[1].departmnt'),
        "unknown route step 'departmnt' (did you mean 'department'?); a step is one of: "
        "department, manager, owner, region, ring_all, voicemail",
    ),
    (
        "route step with two keys",
        'departments: {sales: {}}\nlines:\n  "+74951234567":\n'
        "    route: [{department: sales, manager: x}]\n",
        (8, 13, 'lines.+74951234567.route[0]'),
        "a route step is a mapping with exactly one key",
    ),
    (
        "unknown manager in a route",
        'staff:\n  ivanov: {name: Ivan, phone: PJSIP/101}\nlines:\n  "+74951234567":\n'
        "    route: [{manager: petrov}]\n",
        (9, 23, 'lines.+74951234567.route[0].manager'),
        "unknown manager 'petrov'; staff has: ivanov",
    ),
    (
        "unknown schedule",
        'lines:\n  "+74951234567": {schedule: ofice, route: [{owner: {}}]}\n',
        (6, 30, 'lines.+74951234567.schedule'),
        "unknown schedule 'ofice'; schedules: is empty",
    ),
    (
        "unknown voicemail box",
        'lines:\n  "+74951234567": {route: [{voicemail: nobody}]}\n',
        (6, 40, 'lines.+74951234567.route[0].voicemail'),
        "unknown voicemail box 'nobody'",
    ),
    (
        "region to an unknown department",
        'regions:\n  spb: {prefixes: ["+7812"], department: spb}\n',
        (6, 42, "regions.spb.department"),
        "unknown department 'spb'",
    ),
    (
        "overlapping days",
        'schedules:\n  office:\n    timezone: UTC\n'
        '    weekly: {mon-fri: "09:00-18:00", "fri,sat": "10:00-14:00"}\n',
        (8, 38, 'schedules.office.weekly."fri,sat"'),
        "fri is already given by 'mon-fri'; each day may appear under one key only",
    ),
    (
        "overlapping ranges",
        'schedules:\n  office:\n    timezone: UTC\n'
        '    weekly: {mon: "09:00-13:00, 12:00-18:00"}\n',
        (8, 19, "schedules.office.weekly.mon"),
        "09:00-13:00 and 12:00-18:00 overlap",
    ),
    (
        "bad day name",
        'schedules:\n  office:\n    timezone: UTC\n    weekly: {mon-fry: "09:00-18:00"}\n',
        (8, 14, "schedules.office.weekly.mon-fry"),
        "'mon-fry' is not a set of days",
    ),
    (
        "missing required key",
        "staff:\n  ivanov: {phone: PJSIP/101}\n",
        (6, 3, "staff.ivanov.name"),
        "missing required key 'name'; add name: here",
    ),
    (
        "manager with nothing to ring",
        "staff:\n  ivanov: {name: Ivan}\n",
        (6, 11, "staff.ivanov"),
        "nothing to ring",
    ),
    (
        "endpoint with a space",
        "staff:\n  ivanov: {name: Ivan, phone: PJSIP/1 01}\n",
        (6, 31, "staff.ivanov.phone"),
        "must not contain spaces",
    ),
    (
        "bad staff id",
        "staff:\n  ivan ov: {name: Ivan, phone: PJSIP/101}\n",
        (6, 3, 'staff."ivan ov"'),
        "'ivan ov' is not a usable id",
    ),
    (
        "ring_seconds out of range",
        "departments:\n  sales: {ring_seconds: 601}\n",
        (6, 25, "departments.sales.ring_seconds"),
        "must be at most 600, got '601'",
    ),
    (
        "key given twice",
        "staff:\n  ivanov: {name: Ivan, phone: PJSIP/101}\n"
        "  ivanov: {name: Ivan 2, phone: PJSIP/102}\n",
        (7, 3, "staff.ivanov"),
        "'ivanov' is given twice in this mapping (first at line 6)",
    ),
    (
        "same line number twice in two spellings",
        "numbers: {default_region: RU}\nlines:\n"
        '  "+74951234567": {route: [{owner: {}}]}\n'
        '  "8 (495) 123-45-67": {route: [{owner: {}}]}\n',
        (8, 3, 'lines."8 (495) 123-45-67"'),
        "'8 (495) 123-45-67' is the same number as '+74951234567' (line 7)",
    ),
    (
        "after_hours without a schedule",
        'staff:\n  ivanov: {name: Ivan, phone: PJSIP/101}\nlines:\n  "+74951234567":\n'
        "    route: [{manager: ivanov}]\n    after_hours: {voicemail: ivanov}\n",
        (10, 5, 'lines.+74951234567.after_hours'),
        "after_hours: has no effect without a schedule:",
    ),
    (
        "id both staff and department",
        "staff:\n  sales: {name: Sal, phone: PJSIP/101}\ndepartments:\n  sales: {}\n",
        (8, 3, "departments.sales"),
        "'sales' is both a staff id and a department id",
    ),
    (
        "unknown crm kind",
        "crm: {kind: amocrm}\n",
        (5, 13, "crm.kind"),
        "unknown kind 'amocrm'; expected one of: bitrix24, builtin, webhook",
    ),
    (
        "crm kind missing a field",
        "crm:\n  kind: webhook\n  url: https://crm.example/hook\n",
        (5, 1, "crm.secret"),
        "missing required key 'secret'",
    ),
    (
        "prefix in national form",
        "numbers: {default_region: RU}\nblacklist: [\"8800\"]\n",
        (6, 13, "blacklist[0]"),
        "is neither a valid phone number nor a number prefix",
    ),
    (
        "unknown top-level section",
        "stuff: {}\n",
        (5, 1, "stuff"),
        "unknown key 'stuff' (did you mean 'staff'?)",
    ),
    (
        "text where a list is expected",
        "departments:\n  sales: {members: ivanov}\n",
        (6, 20, "departments.sales.members"),
        "expected a list, like [a, b] or one '- item' per line, got 'ivanov'",
    ),
    (
        "duplicate prefix in two regions",
        "departments: {a: {}, b: {}}\n"
        'regions:\n  one: {prefixes: ["+7812"], department: a}\n'
        '  two: {prefixes: ["+7 812"], department: b}\n',
        (8, 20, "regions.two.prefixes[0]"),
        "prefix +7812 is already in region 'one' (line 7)",
    ),
    (
        "duplicate country in two regions",
        "departments: {a: {}, b: {}}\n"
        'regions:\n  one: {countries: [KZ], department: a}\n'
        '  two: {countries: [BY, kz], department: b}\n',
        (8, 25, "regions.two.countries[1]"),
        "country KZ is already in region 'one' (line 7)",
    ),
    (
        "unknown country in a region",
        "departments: {a: {}}\n"
        'regions:\n  one: {countries: [XX], department: a}\n',
        (7, 21, "regions.one.countries[0]"),
        "'XX' is not a region code",
    ),
    (
        "region without an area",
        "departments: {a: {}}\n"
        'regions:\n  one: {department: a}\n',
        (7, 8, "regions.one"),
        "a region needs prefixes:",
    ),
    (
        "missed-call SLA of zero minutes",
        "missed_calls: {sla_minutes: 0}\n",
        (5, 29, "missed_calls.sla_minutes"),
        "must be at least 1, got '0'",
    ),
    (
        "line SLA that is not a number",
        'staff:\n  ivanov: {name: Ivan, phone: PJSIP/101}\nlines:\n'
        '  "+74951234567": {route: [{manager: ivanov}], sla_minutes: soon}\n',
        (8, 61, "lines.+74951234567.sla_minutes"),
        "expected a whole number, got 'soon'",
    ),
    (
        "recording method Asterisk does not have",
        "recordings: {method: monitor}\n",
        (5, 22, "recordings.method"),
        "'mixmonitor' or 'bridge'",
    ),
    (
        "recording spool MixMonitor cannot be given",
        'recordings: {asterisk_dir: "/var/spool/asterisk/rec,ording"}\n',
        (5, 28, "recordings.asterisk_dir"),
        "commas split its arguments",
    ),
    (
        "local view of the spool that is relative",
        'recordings: {local_dir: "var/spool/asterisk/recording"}\n',
        (5, 25, "recordings.local_dir"),
        "is not an absolute path",
    ),
]


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [pytest.param(body, where, message, id=name) for name, body, where, message in CASES],
)
def test_given_one_mistake_then_exactly_that_problem_is_reported(
        body: str, where: Located, message: str) -> None:
    problems = problems_of(HEAD + body)

    assert located(problems) == [where]
    assert message in problems[0].message


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        pytest.param("staff:\n  ivanov:\n\tname: Ivan\n", (3, 1, ""),
                     "YAML syntax error: found character '\\t' that cannot start any token",
                     id="tab"),
        pytest.param("staff:\n  ivanov:\n    name: Ivan: Ivanov\n", (3, 15, ""),
                     "YAML syntax error: mapping values are not allowed here", id="colon"),
        pytest.param("staff: {ivanov: {name: Ivan}\nlines: {}\n", (2, 1, ""),
                     "YAML syntax error: expected ',' or '}', but got '<scalar>' (while parsing "
                     "a flow mapping that starts at line 1, column 8)", id="unclosed-flow"),
        pytest.param("", (None, None, ""), "the file is empty", id="empty"),
        pytest.param("# only a comment\n", (None, None, ""), "the file is empty", id="comment"),
        pytest.param("- asterisk\n", (1, 1, ""), "expected a mapping of sections", id="list"),
        pytest.param("a: 1\n---\nb: 2\n", (2, 1, ""),
                     "expected a single document in the stream, but found another document",
                     id="two-documents"),
    ],
)
def test_given_unreadable_yaml_then_one_problem_with_its_line(
        text: str, where: Located, message: str) -> None:
    problems = problems_of(text)

    assert located(problems) == [where]
    assert message in problems[0].message


def test_given_secret_from_environment_when_invalid_then_it_is_not_echoed() -> None:
    problems = problems_of(HEAD + 'database: "${DB}"\n',
                           env={"DB": "mysql://pbx:hunter2@db/pbx"})

    assert located(problems) == [(5, 11, "database")]
    assert "hunter2" not in str(problems[0])


def test_given_token_pasted_instead_of_its_hash_then_the_token_is_not_echoed() -> None:
    problems = problems_of(
        HEAD + "http:\n  tokens: [{name: crm, sha256: s3cr3t, scopes: [read]}]\n")

    assert located(problems) == [(6, 32, "http.tokens[0].sha256")]
    assert "s3cr3t" not in problems[0].message
    assert "sha256sum" in problems[0].message


# --- what valid input becomes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+74951234567", None, "+74951234567"),
        ("+7 (495) 123-45-67", None, "+74951234567"),
        ("8 495 123 45 67", "RU", "+74951234567"),
        ("89161234567", "RU", "+79161234567"),
    ],
)
def test_given_number_when_normalized_then_e164(
        text: str, region: str | None, expected: str) -> None:
    assert normalize_number(text, region) == expected


@pytest.mark.parametrize(
    ("text", "region"),
    [("+7916123", None), ("89161234567", None), ("+7 495 CALL-NOW", None), ("hello", "RU"),
     ("", "RU")],
)
def test_given_not_a_number_when_normalized_then_value_error(
        text: str, region: str | None) -> None:
    with pytest.raises(ValueError, match="phone number"):
        normalize_number(text, region)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("+7", "+7"), ("+7 812", "+7812"), ("+7800555", "+7800555"),
     ("89000000000", "+79000000000"), ("+1", "+1"), ("+44 20", "+4420")],
)
def test_given_prefix_when_normalized_then_international(text: str, expected: str) -> None:
    assert normalize_prefix(text, "RU") == expected


@pytest.mark.parametrize("text", ["8800", "+", "+0", "+999", "7812", "+7-abc"])
def test_given_bad_prefix_when_normalized_then_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"prefix|country calling code|letters"):
        normalize_prefix(text, "RU")


@pytest.mark.parametrize(
    ("weekly", "expected"),
    [
        ('{mon-fri: "09:00-18:00"}',
         {"mon": "09:00-18:00", "fri": "09:00-18:00", "sat": "", "sun": ""}),
        ('{"mon,wed": "09:00-13:00, 14:00-18:00", tue: closed}',
         {"mon": "09:00-13:00 14:00-18:00", "tue": "", "wed": "09:00-13:00 14:00-18:00",
          "thu": ""}),
        ('{sat-sun: "00:00-24:00"}', {"sat": "00:00-24:00", "fri": ""}),
        ('{Monday: "14:00-18:00, 9:00-13:00"}', {"mon": "09:00-13:00 14:00-18:00"}),
        ("{mon-fri: 09:00-18:00}", {"wed": "09:00-18:00"}),  # unquoted: still text
    ],
)
def test_given_weekly_hours_then_each_day_gets_sorted_ranges(
        weekly: str, expected: dict[str, str]) -> None:
    config = parse(f"schedules:\n  s: {{timezone: UTC, weekly: {weekly}}}\n")

    week = config.schedules["s"].weekly
    assert len(week) == 7
    for day, hours in expected.items():
        assert " ".join(str(r) for r in week[Weekday[day.upper()]]) == hours


def test_given_end_of_day_range_then_it_contains_the_last_minute() -> None:
    whole = TimeRange(start=time(0), end=time.max)

    assert str(whole) == "00:00-24:00"
    assert whole.contains(time(23, 59, 59))
    assert not TimeRange(start=time(9), end=time(18)).contains(time(18))


def test_given_holiday_then_schedule_has_no_hours_that_day() -> None:
    config = parse('schedules:\n  s: {timezone: Europe/Moscow, weekly: {mon-fri: "09:00-18:00"},'
                   " holidays: [2027-01-01]}\n")

    schedule = config.schedules["s"]
    assert schedule.holidays == (date(2027, 1, 1),)
    assert schedule.hours(date(2027, 1, 1)) == ()  # a Friday
    assert schedule.hours(date(2027, 1, 8)) == (TimeRange(start=time(9), end=time(18)),)
    assert schedule.zone().key == "Europe/Moscow"


def test_given_every_route_step_kind_then_each_becomes_its_model() -> None:
    config = parse("""\
        staff: {ivanov: {name: Ivan, phone: PJSIP/101}}
        departments: {sales: {members: [ivanov]}}
        lines:
          "+74951234567":
            route:
              - owner: {then: [mobile, head]}
              - department: sales
              - manager: ivanov
              - region: {default: sales}
              - ring_all: [ivanov]
              - voicemail: sales
              - owner:
        """)

    kinds = []
    for step in config.lines["+74951234567"].route:
        match step:
            case OwnerStep(owner=owner):
                kinds.append(f"owner{list(owner.then)}")
            case DepartmentStep(department=department):
                kinds.append(f"department {department}")
            case ManagerStep(manager=manager):
                kinds.append(f"manager {manager}")
            case RegionStep(region=region):
                kinds.append(f"region default {region.default}")
            case RingAllStep(ring_all=members):
                kinds.append(f"ring_all {list(members)}")
            case VoicemailStep(voicemail=box):
                kinds.append(f"voicemail {box}")
    assert kinds == ["owner['mobile', 'head']", "department sales", "manager ivanov",
                     "region default sales", "ring_all ['ivanov']", "voicemail sales", "owner[]"]


def test_given_plain_scalars_then_they_stay_text_until_a_field_converts_them() -> None:
    config = parse("""\
        numbers: {default_region: NO}
        staff: {ivanov: {name: Ivan, short: 0101, phone: PJSIP/101}}
        departments: {sales: {ring_seconds: 30}}
        lines: {+74951234567: {route: [{department: sales}]}}
        """)

    assert config.numbers.default_region == "NO"  # not False
    assert config.staff["ivanov"].short == "0101"  # not octal 65
    assert config.departments["sales"].ring_seconds == 30
    assert list(config.lines) == ["+74951234567"]  # the plus kept


def test_given_national_numbers_and_default_region_then_stored_as_e164() -> None:
    config = parse("""\
        numbers: {default_region: ru, dial_allowed: ["+7"]}
        staff: {ivanov: {name: Ivan, mobile: 8 916 123-45-67}}
        departments: {sales: {caller_id: "8 (495) 123-45-67"}}
        lines: {"84951234567": {route: [{department: sales}]}}
        """)

    assert config.numbers.default_region == "RU"
    assert config.staff["ivanov"].mobile == "+79161234567"
    assert config.departments["sales"].caller_id == "+74951234567"
    assert list(config.lines) == ["+74951234567"]


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${V}", {"V": "x"}, "x"),
        ("a-${V}-b", {"V": "x"}, "a-x-b"),
        ("${V:-fallback}", {}, "fallback"),
        ("${V:-fallback}", {"V": ""}, "fallback"),
        ("${V:-fallback}", {"V": "set"}, "set"),
        ("$${V}", {"V": "x"}, "${V}"),
        ("pa$$word", {}, "pa$$word"),
    ],
)
def test_given_env_reference_then_substituted(
        value: str, env: dict[str, str], expected: str) -> None:
    config = parse(f"staff: {{ivanov: {{name: '{value}', phone: PJSIP/101}}}}\n", env=env)

    assert config.staff["ivanov"].name == expected


def test_given_merge_keys_then_defaults_are_shared_without_duplicate_key_problems() -> None:
    config = parse("""\
        departments:
          sales: &defaults {strategy: ring_all, ring_seconds: 30}
          spb:
            <<: *defaults
            ring_seconds: 15
        """)

    assert config.departments["spb"].strategy == "ring_all"
    assert config.departments["spb"].ring_seconds == 15


def test_given_webhook_crm_then_its_secret_is_hidden_in_repr() -> None:
    config = parse("crm: {kind: webhook, url: 'https://crm.example/hook', secret: '${S}'}\n",
                   env={"S": "hmac-key"})

    assert isinstance(config.crm, WebhookCrm)
    assert config.crm.secret.get_secret_value() == "hmac-key"
    assert "hmac-key" not in repr(config)


def test_given_missed_calls_section_then_default_and_line_slas_are_read() -> None:
    assert parse("").missed_calls.sla_minutes == 15

    config = parse("""\
        missed_calls: {sla_minutes: 20}
        staff: {ivanov: {name: Ivan, phone: PJSIP/101}}
        lines:
          "+74951234567": {route: [{manager: ivanov}], sla_minutes: 60}
          "+74959876543": {route: [{manager: ivanov}]}
        """)

    assert config.missed_calls.sla_minutes == 20
    assert config.lines["+74951234567"].sla_minutes == 60
    assert config.lines["+74959876543"].sla_minutes is None


def test_given_config_then_models_are_frozen() -> None:
    config = parse("staff: {ivanov: {name: Ivan, phone: PJSIP/101}}\n")

    with pytest.raises(ValueError, match="frozen"):
        config.staff["ivanov"].name = "Petr"  # type: ignore[misc]


# --- files and the check-config command -------------------------------------------------------


def test_given_missing_file_when_loaded_then_one_problem_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.problems == [ConfigProblem(str(path), None, None, "", "no such file")]
    assert str(caught.value) == f"{path}: no such file"


def test_given_good_file_when_checked_then_ok_summary_and_zero(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)

    assert check_config_main(str(EXAMPLE)) == 0
    assert capsys.readouterr().out == f"OK: {EXAMPLE}: 4 staff, 2 departments, 3 lines\n"


def test_given_broken_file_when_checked_then_every_problem_and_a_hint_and_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN, encoding="utf-8")

    assert check_config_main(str(path)) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in err[:5]] == [
        f"{path}:10:31", f"{path}:11:19", f"{path}:12:5", f"{path}:14:15", f"{path}:20:12"]
    assert err[5].startswith(f"5 problems in {path}")
    assert len(err) == 6


# --- http.rate_limits (HTTP API) --------------------------------------------------------------


def test_given_no_rate_limits_then_the_defaults() -> None:
    limits = parse("http: {listen: 127.0.0.1:8090}\n").http.rate_limits

    assert (limits.originate_per_token, limits.originate_per_manager,
            limits.originate_concurrent_per_manager, limits.read_per_token,
            limits.event_streams_per_token) == (30, 6, 1, 600, 5)


def test_given_rate_limits_then_they_are_read() -> None:
    config = parse("http:\n  rate_limits: {originate_per_token: 10, originate_per_manager: 2}\n")

    assert config.http.rate_limits.originate_per_token == 10
    assert config.http.rate_limits.originate_per_manager == 2
    assert config.http.rate_limits.read_per_token == 600


def test_given_a_bad_rate_limit_then_it_is_located() -> None:
    problems = problems_of(HEAD + "http:\n  rate_limits: {originate_per_manager: 0, burst: 3}\n")

    assert located(problems) == [(6, 40, "http.rate_limits.originate_per_manager"),
                                 (6, 43, "http.rate_limits.burst")]
    assert problems[0].message == "must be at least 1, got '0'"
    assert problems[1].message.startswith("unknown key 'burst'; allowed here: ")
