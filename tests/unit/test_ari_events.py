"""ARI JSON → typed events and errors (shapes as Asterisk 22 sends them)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pbxbrain.adapters.ari import (
    AriEvent,
    AriNotFound,
    ChannelDestroyed,
    ChannelHangupRequest,
    DialEvent,
    RecordingEvent,
    StasisEnd,
    StasisStart,
    _error,
    parse_event,
)

CHANNEL = {
    "id": "1795564914.12",
    "name": "PJSIP/pstn-00000003",
    "state": "Ring",
    "caller": {"name": "", "number": "89161112233"},
    "connected": {"name": "", "number": ""},
    "accountcode": "",
    "dialplan": {"context": "from-pstn", "exten": "74951234567", "priority": 2,
                 "app_name": "Stasis", "app_data": "pbxbrain,inbound,74951234567"},
    "creationtime": "2026-11-25T00:01:54.442+0000",
    "language": "en",
}


def test_given_stasis_start_then_channel_args_and_time_are_typed() -> None:
    event = parse_event({"type": "StasisStart", "timestamp": "2026-11-25T00:01:54.450+0000",
                         "args": ["inbound", "74951234567"], "channel": CHANNEL,
                         "application": "pbxbrain", "asterisk_id": "x"})
    assert isinstance(event, StasisStart)
    assert event.args == ("inbound", "74951234567")
    assert event.channel.caller.number == "89161112233"
    assert event.channel.context == "from-pstn"
    assert event.channel.priority == 2
    assert event.replace_channel is None
    assert event.at == datetime(2026, 11, 25, 0, 1, 54, 450000, tzinfo=UTC)


def test_given_stasis_start_with_replace_channel_then_it_is_kept() -> None:
    event = parse_event({"type": "StasisStart", "args": [], "channel": CHANNEL,
                         "replace_channel": {**CHANNEL, "id": "old"}})
    assert isinstance(event, StasisStart)
    assert event.replace_channel is not None
    assert event.replace_channel.id == "old"


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        ({"type": "StasisEnd", "channel": CHANNEL}, StasisEnd),
        ({"type": "ChannelDestroyed", "channel": CHANNEL, "cause": 16,
          "cause_txt": "Normal Clearing"}, ChannelDestroyed),
        ({"type": "ChannelHangupRequest", "channel": CHANNEL, "cause": 16}, ChannelHangupRequest),
        ({"type": "Dial", "peer": CHANNEL, "dialstatus": "BUSY"}, DialEvent),
        ({"type": "RecordingFinished", "recording": {"name": "r1", "format": "wav",
                                                     "state": "done", "duration": 7}},
         RecordingEvent),
        ({"type": "SomethingNew", "x": 1}, AriEvent),
    ],
)
def test_given_an_event_then_its_class(raw: dict[str, object], cls: type[AriEvent]) -> None:
    event = parse_event(raw)
    assert type(event) is cls
    assert event.type == raw["type"]


def test_given_a_destroyed_channel_then_cause_is_kept() -> None:
    event = parse_event({"type": "ChannelDestroyed", "channel": CHANNEL, "cause": 17,
                         "cause_txt": "User busy"})
    assert isinstance(event, ChannelDestroyed)
    assert (event.cause, event.cause_txt) == (17, "User busy")


def test_given_a_404_then_a_typed_error_with_asterisks_message() -> None:
    err = _error("POST", "/channels/x/answer", 404, '{"message": "Channel not found"}')
    assert isinstance(err, AriNotFound)
    assert err.status == 404
    assert err.message == "Channel not found"
    assert str(err) == "ARI POST /channels/x/answer: 404 Channel not found"


def test_given_a_non_json_error_body_then_the_text_is_the_message() -> None:
    err = _error("GET", "/x", 500, "Internal Server Error\n")
    assert not isinstance(err, AriNotFound)
    assert err.message == "Internal Server Error"
