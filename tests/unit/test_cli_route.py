"""``pbxbrain route``: the dry run prints the plan (text or JSON) from the config alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pbxbrain.cli import main
from pbxbrain.cli_route import route_main

CONFIG = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
numbers: {default_region: RU}
staff:
  ivanov:    {name: Ivan Ivanov, short: "101", phone: PJSIP/101, mobile: "+79161234567"}
  petrov:    {name: Petr Petrov, short: "102", phone: PJSIP/102}
  kuznetsov: {name: Nikolai Kuznetsov, short: "103", phone: PJSIP/103}
departments:
  sales: {short: "200", members: [ivanov, petrov], head: kuznetsov, strategy: round_robin}
schedules:
  office: {timezone: Europe/Moscow, weekly: {mon-fri: "09:00-18:00"}}
lines:
  "+74951234567":
    name: Main line
    source: website
    schedule: office
    route: [{owner: {then: [mobile, department, head]}}, {department: sales}]
    after_hours: {prompt: after-hours, voicemail: sales}
blacklist: ["+79000000000"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "pbxbrain.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return str(path)


def route(config: str, caller: str = "89161112233", dialed: str = "84951234567",
          at: str | None = "2026-11-25T10:00+03:00", owner: str | None = None,
          busy: list[str] | None = None, offline: list[str] | None = None,
          as_json: bool = False, internal: bool = False) -> int:
    return route_main(config, caller, dialed, at, owner, busy or [], offline or [], as_json,
                      internal)


def test_given_an_open_line_then_the_plan_and_its_reasons_are_printed(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = route(config_file, owner="ivanov", busy=["petrov"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == ("call from +79161112233 to 84951234567 at "
                                   "2026-11-25T07:00:00+00:00")
    assert "rule: route   line: +74951234567 (source website)   record: yes" in out
    assert "  1. ring at once, 20 s: ivanov PJSIP/101 — owner ivanov (desk)" in out
    assert "  2. ring at once, 20 s: ivanov PJSIP/+79161234567@pstn" in out
    assert "  3. ring at once, 20 s: kuznetsov PJSIP/103 — head of sales" in out
    assert "skipped: petrov (busy)" in out
    assert "  - open: Europe/Moscow Wed 10:00" in out


def test_given_json_then_the_call_and_plan_are_one_json_document(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = route(config_file, as_json=True, offline=["ivanov"])

    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["call"] == {"caller": "+79161112233", "dialed": "84951234567",
                                "direction": "inbound", "at": "2026-11-25T07:00:00+00:00"}
    plan = document["plan"]
    assert plan["rule"] == "route"
    assert [t["staff_id"] for t in plan["steps"][0]["targets"]] == ["petrov"]
    assert plan["skipped"] == [{"staff_id": "ivanov", "reason": "offline"}]
    assert plan["cursor_used"] == {"sales": 0}


@pytest.mark.parametrize(
    ("at", "rule"),
    [
        ("2026-11-23T08:59", "after_hours"),  # no offset: read in the line's zone
        ("2026-11-23T09:00", "route"),
        ("2026-11-23T05:59:59+00:00", "after_hours"),
        ("2026-11-23T06:00:00Z", "route"),
        ("2026-11-28T12:00+03:00", "after_hours"),  # saturday
    ],
)
def test_given_a_time_then_the_schedule_is_read_at_that_time(
    config_file: str, capsys: pytest.CaptureFixture[str], at: str, rule: str
) -> None:
    assert route(config_file, at=at, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["rule"] == rule


@pytest.mark.parametrize(
    ("caller", "dialed", "internal", "rule"),
    [
        ("+79000000000", "+74951234567", False, "blacklist"),
        ("89161112233", "84957654321", False, "unknown_line"),
        ("102", "101", True, "short:ivanov"),
        ("102", "200", True, "short:sales"),
        ("102", "101", False, "unknown_line"),
    ],
)
def test_given_a_caller_and_a_number_then_the_rule_that_decides_is_shown(
    config_file: str, capsys: pytest.CaptureFixture[str], caller: str, dialed: str,
    internal: bool, rule: str
) -> None:
    assert route(config_file, caller=caller, dialed=dialed, internal=internal) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"rule: {rule}")


def test_given_no_time_then_now_is_used(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert route(config_file, at=None, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["rule"] in ("route", "after_hours")


def test_given_busy_as_a_list_then_each_name_counts(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert route(config_file, busy=["ivanov,petrov"], offline=["kuznetsov"], as_json=True) == 0

    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["steps"] == []
    assert {s["staff_id"] for s in plan["skipped"]} == {"ivanov", "petrov"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner": "ivanof"}, "unknown staff id(s) ivanof; staff has: ivanov, kuznetsov"),
        ({"busy": ["petrof"]}, "unknown staff id(s) petrof"),
        ({"at": "next tuesday"}, "--at 'next tuesday' is not a date and time"),
    ],
)
def test_given_bad_options_then_exit_2_with_a_message(
    config_file: str, capsys: pytest.CaptureFixture[str], kwargs: dict[str, Any],
    message: str
) -> None:
    assert route(config_file, **kwargs) == 2
    assert message in capsys.readouterr().err


def test_given_a_broken_config_then_exit_2_with_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("head: kuznetsov", "head: kuznetsof"), encoding="utf-8")

    assert route(str(path)) == 2
    err = capsys.readouterr().err
    assert "unknown manager 'kuznetsof'" in err
    assert f"pbxbrain check-config {path}" in err


def test_given_no_config_file_then_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert route(str(tmp_path / "missing.yaml")) == 2
    assert "no such file" in capsys.readouterr().err


def test_given_the_command_line_then_route_is_dispatched(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["route", "--config", config_file, "--from", "89161112233",
                 "--to", "84951234567", "--at", "2026-11-25T10:00+03:00", "--owner", "ivanov",
                 "--busy", "petrov", "--offline", "kuznetsov", "--json"])

    plan = json.loads(capsys.readouterr().out)["plan"]
    assert code == 0
    assert [s["kind"] for s in plan["steps"]] == ["ring", "ring"]
    assert plan["skipped"] == [{"staff_id": "petrov", "reason": "busy"},
                               {"staff_id": "kuznetsov", "reason": "offline"},
                               {"staff_id": "ivanov", "reason": "already rung in this plan"}]


def test_given_internal_on_the_command_line_then_short_numbers_work(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["route", "--config", config_file, "--from", "102", "--to", "101",
                 "--internal"])

    assert code == 0
    assert "rule: short:ivanov" in capsys.readouterr().out
