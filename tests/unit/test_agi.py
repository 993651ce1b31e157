"""Our FastAGI server against a fake Asterisk on a real socket (no Asterisk needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from pbxbrain.adapters.agi import (
    AgiChannel,
    AgiClosed,
    AgiError,
    AgiHandler,
    AgiHangup,
    AgiResponse,
    AgiServer,
    agi_quote,
)

LOGGER = "pbxbrain.adapters.agi"
CHANNEL = "PJSIP/trunk-00000001"
Body = Callable[[AgiChannel], Awaitable[object]]
StartServer = Callable[..., Awaitable[AgiServer]]


# -- the fake Asterisk -------------------------------------------------------------------
def header(script: str = "inbound", *args: str, **env: str) -> bytes:
    """The environment res_agi sends for ``AGI(agi://127.0.0.1:4573/<script>,<args>)``."""
    values = {
        "network": "yes", "network_script": script,
        "request": f"agi://127.0.0.1:4573/{script}", "channel": CHANNEL, "language": "en",
        "type": "PJSIP", "uniqueid": "1700000000.1", "version": "20.5.0",
        "callerid": "79161234567", "calleridname": "unknown", "callingpres": "0",
        "callingani2": "0", "callington": "0", "callingtns": "0", "dnid": "74951234567",
        "rdnis": "unknown", "context": "from-pstn-agi", "extension": "74951234567",
        "priority": "1", "enhanced": "0.0", "accountcode": "", "threadid": "139872",
    } | env
    lines = [f"agi_{name}: {value}" for name, value in values.items()]
    lines += [f"agi_arg_{n}: {arg}" for n, arg in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode()


def asterisk_args(line: str) -> list[str]:
    """A command's arguments as res_agi's ``parse_args`` splits them (quotes, escapes)."""
    argv: list[str] = []
    quoted = escaped = False
    whitespace = True
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                argv.append("")
                whitespace = False
            continue
        if char in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            argv.append("")
            whitespace = False
        argv[-1] += char
        escaped = False
    return argv


class FakeAsterisk:
    """One FastAGI connection, as Asterisk makes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\n" for line in lines).encode())
        await self.writer.drain()

    async def command(self) -> str:
        """The next command pbxbrain sends."""
        async with asyncio.timeout(2):
            raw = await self.reader.readline()
        assert raw.endswith(b"\n"), f"expected a command, got {raw!r}"
        return raw[:-1].decode()

    async def answer(self, *lines: str) -> list[str]:
        """Read a command, answer it with ``lines``; the command's arguments."""
        argv = asterisk_args(await self.command())
        await self.send(*lines)
        return argv

    async def closed_by_server(self) -> None:
        """Wait (bounded) for pbxbrain to close the connection, sending nothing more."""
        try:
            async with asyncio.timeout(2):
                rest = await self.reader.read()
        except ConnectionResetError:
            return
        assert rest == b"", f"expected the connection closed, got {rest!r}"


class Probe:
    """The handler under test: runs ``body`` for each session and keeps its outcome."""

    def __init__(self, body: Body | None = None) -> None:
        self.body = body
        self.calls = 0
        self.outcomes: asyncio.Queue[tuple[AgiChannel, object]] = asyncio.Queue()

    async def __call__(self, channel: AgiChannel) -> None:
        self.calls += 1
        try:
            result = await self.body(channel) if self.body is not None else None
        except BaseException as exc:
            self.outcomes.put_nowait((channel, exc))
            raise
        self.outcomes.put_nowait((channel, result))

    async def next(self) -> tuple[AgiChannel, object]:
        """The next session's channel and what its body returned (its error re-raised)."""
        channel, outcome = await self.next_outcome()
        if isinstance(outcome, BaseException):
            raise outcome
        return channel, outcome

    async def next_outcome(self) -> tuple[AgiChannel, object]:
        async with asyncio.timeout(2):
            return await self.outcomes.get()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(2):
        while not condition():  # noqa: ASYNC110  # public state, no event to wait on
            await asyncio.sleep(0.001)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


class LoopFrozen(Exception):
    """The event loop did not come back for seconds: something spins without awaiting."""


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Fail, instead of hanging forever, when the event loop freezes (a spinning server
    never gives ``asyncio.timeout`` a chance): SIGALRM interrupts whatever runs."""
    fired: list[bool] = []

    def alarm(signum: int, frame: FrameType | None) -> None:
        fired.append(True)
        raise LoopFrozen("the event loop was stuck for 5 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired, "the event loop froze"


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[AgiServer] = []

    async def start(handler: AgiHandler, **options: Any) -> AgiServer:
        server = AgiServer(handler, "127.0.0.1", 0, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(timeout_s=1)


@pytest.fixture
async def asterisk() -> AsyncIterator[Callable[[AgiServer, bytes], Awaitable[FakeAsterisk]]]:
    fakes: list[FakeAsterisk] = []

    async def connect(server: AgiServer, data: bytes) -> FakeAsterisk:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        fake = FakeAsterisk(reader, writer)
        fakes.append(fake)
        if data:
            writer.write(data)
            await writer.drain()
        return fake

    yield connect
    for fake in fakes:
        fake.writer.close()
        with contextlib.suppress(OSError):
            await fake.writer.wait_closed()


Connect = Callable[[AgiServer, bytes], Awaitable[FakeAsterisk]]


# -- the header --------------------------------------------------------------------------
async def test_given_a_full_header_with_args_then_the_handler_sees_env_script_and_args(
        start_server: StartServer, asterisk: Connect) -> None:
    probe = Probe()
    server = await start_server(probe)
    args = [f"a{n}" for n in range(1, 12)]  # 11: arg_10 comes after arg_9, not after arg_1
    data = header("inbound", *args, calleridname="Ivan: sales").replace(
        b"agi_language: en", b"agi_language: \xff")
    await asterisk(server, data)

    channel, _ = await probe.next()

    assert channel.script == "inbound"
    assert channel.args == tuple(args)
    assert channel.env["channel"] == CHANNEL
    assert channel.env["callerid"] == "79161234567"
    assert channel.env["calleridname"] == "Ivan: sales"
    assert channel.env["rdnis"] == "unknown"
    assert channel.env["accountcode"] == ""
    assert channel.env["extension"] == "74951234567"
    assert channel.env["arg_1"] == "a1"
    assert channel.env["language"] == "\ufffd"  # not UTF-8: replaced, not fatal
    assert "agi_channel" not in channel.env
    assert channel.peer.startswith("127.0.0.1:")
    assert not channel.hung_up


async def test_given_a_header_without_network_script_when_connected_then_script_is_empty(
        start_server: StartServer, asterisk: Connect) -> None:
    probe = Probe()
    server = await start_server(probe)
    await asterisk(server, b"agi_network: yes\nagi_arg_1: 74951234567\n\n")

    channel, _ = await probe.next()

    assert (channel.script, channel.args) == ("", ("74951234567",))


@pytest.mark.parametrize("sent", [b"", b"agi_network: yes\nagi_netw", b"agi_network: yes\n"],
                         ids=["nothing", "half-a-line", "lines-but-no-blank-line"])
async def test_given_half_a_header_then_eof_then_the_handler_is_not_called_and_the_loop_stays_free(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture,
        sent: bytes) -> None:
    probe = Probe()
    server = await start_server(probe)
    async with asyncio.timeout(2):
        fake = await asterisk(server, sent)
        fake.writer.write_eof()  # EOF for the server; we still read its side

        await fake.closed_by_server()
        good = await asterisk(server, header("inbound"))  # served at once: the loop is free
        channel, _ = await probe.next()

    assert channel.script == "inbound"
    assert probe.calls == 1
    await good.closed_by_server()
    [warning] = records(caplog, logging.WARNING)
    assert "before the header's empty line" in warning.getMessage()
    assert f"({len(sent)} header bytes received)" in warning.getMessage()
    assert "127.0.0.1:" in warning.getMessage()


async def test_given_a_header_that_never_finishes_then_it_is_closed_after_the_deadline(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe()
    server = await start_server(probe, header_timeout_s=0.2)
    loop = asyncio.get_running_loop()
    fake = await asterisk(server, b"agi_network: yes\n")
    started = loop.time()

    await fake.closed_by_server()

    assert loop.time() - started >= 0.15
    assert probe.calls == 0
    [warning] = records(caplog, logging.WARNING)
    assert "no complete header within 0.2 s (17 header bytes received)" in warning.getMessage()


@pytest.mark.parametrize(("sent", "problem"), [
    (b"".join(b"agi_var_%d: %s\n" % (n, b"x" * 40) for n in range(10)), "header over 256 bytes"),
    (b"agi_callerid: " + b"7" * 1000, "a header line over 256 bytes"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an 'agi_name: value' header line: 'GET / HTTP"),
    (b"agi_network yes\n\n", "not an 'agi_name: value' header line"),
], ids=["too-many-lines", "one-endless-line", "http", "no-colon"])
async def test_given_an_oversized_or_garbage_header_when_connected_then_it_is_closed_unhandled(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture,
        sent: bytes, problem: str) -> None:
    probe = Probe()
    server = await start_server(probe, max_header_bytes=256)
    fake = await asterisk(server, sent)

    await fake.closed_by_server()

    assert probe.calls == 0
    [warning] = records(caplog, logging.WARNING)
    assert problem in warning.getMessage()


# -- commands ----------------------------------------------------------------------------
async def test_given_commands_when_run_then_asterisk_parses_exactly_the_arguments_sent(
        start_server: StartServer, asterisk: Connect) -> None:
    dial = 'PJSIP/101&PJSIP/102,20,gU(pbxbrain-answered^c1)M(x "y" z\\w)'
    value = 'say "hi", \\o/ and\ttab'

    async def body(ch: AgiChannel) -> object:
        got = (await ch.exec("Dial", dial), await ch.exec("Answer"),
               await ch.get_variable("NOPE"), await ch.get_variable("CALLERID(name)"),
               await ch.get_variable("EMPTY"))
        await ch.set_variable("PBXBRAIN_RESULT", value)
        await ch.answer()
        await ch.verbose('a "quoted" line', 2)
        await ch.hangup()
        return got

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    assert await fake.answer("200 result=0") == ["EXEC", "Dial", dial]
    assert await fake.answer("200 result=0") == ["EXEC", "Answer", ""]
    assert await fake.answer("200 result=0") == ["GET", "VARIABLE", "NOPE"]
    assert await fake.answer("200 result=1 (Ivan (sales) :))") == [
        "GET", "VARIABLE", "CALLERID(name)"]
    assert await fake.answer("200 result=1 ()") == ["GET", "VARIABLE", "EMPTY"]
    assert await fake.answer("200 result=1") == ["SET", "VARIABLE", "PBXBRAIN_RESULT", value]
    assert await fake.answer("200 result=0") == ["ANSWER"]
    assert await fake.answer("200 result=1") == ["VERBOSE", 'a "quoted" line', "2"]
    assert await fake.answer("200 result=1") == ["HANGUP"]
    _, outcome = await probe.next()

    assert outcome == (AgiResponse(200, 0, None, ""), AgiResponse(200, 0, None, ""), None,
                       "Ivan (sales) :)", "")
    await fake.closed_by_server()  # the handler returned: the AGI ends


@pytest.mark.parametrize(("line", "expected"), [
    ("200 result=0 (timeout) endpos=1234", AgiResponse(200, 0, "timeout", "endpos=1234")),
    ("200 result=-1 endpos=0", AgiResponse(200, -1, None, "endpos=0")),
    ("200 result=35", AgiResponse(200, 35, None, "")),
    ("200 result=1 (a (b) c) endpos=7", AgiResponse(200, 1, "a (b) c", "endpos=7")),
    ("200 result=1 (unclosed", AgiResponse(200, 1, "unclosed", "")),
    ("200 result=1 (x)\r", AgiResponse(200, 1, "x", "")),
])
async def test_given_a_200_answer_when_parsed_then_result_data_and_rest_are_split(
        start_server: StartServer, asterisk: Connect, line: str,
        expected: AgiResponse) -> None:
    probe = Probe(lambda ch: ch.command("RECORD FILE /tmp/x wav # 1000 0 BEEP"))
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.answer(line)

    assert (await probe.next())[1] == expected


async def test_given_hangup_before_the_answer_then_the_answer_is_returned_and_hung_up_set(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    async def body(ch: AgiChannel) -> object:
        return await ch.get_variable("DIALSTATUS"), ch.hung_up

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.answer("HANGUP", "200 result=1 (CANCEL)")

    assert (await probe.next())[1] == ("CANCEL", True)
    assert not records(caplog, logging.WARNING)


async def test_given_hangup_with_no_command_outstanding_when_commanding_next_then_hung_up_is_set(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    async def body(ch: AgiChannel) -> object:
        before = ch.hung_up
        await ch.set_variable("A", "1")
        await ch.set_variable("B", "2")
        return before, ch.hung_up

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.answer("200 result=1")
    await fake.send("HANGUP")  # between two commands
    await fake.answer("200 result=1")

    assert (await probe.next())[1] == (False, True)
    assert not records(caplog, logging.WARNING)


async def test_given_a_511_when_commanding_then_agi_hangup_and_dead_channel_commands_still_work(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        with pytest.raises(AgiHangup) as hangup:
            await ch.exec("Playback", "hello")
        return hangup.value.code, ch.hung_up, await ch.get_variable("DIALSTATUS")

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.answer("511 Command Not Permitted on a dead channel or intercepted by a parked "
                      "call")
    await fake.answer("200 result=1 (NOANSWER)")

    assert (await probe.next())[1] == (511, True, "NOANSWER")


async def test_given_510_520_or_garbage_then_agi_error_naming_the_command_and_still_in_step(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        errors: list[AgiError] = []
        for line in ("FOO BAR", "GET VARIABLE", "NOOP"):
            with pytest.raises(AgiError) as error:
                await ch.command(line)
            errors.append(error.value)
        return errors, await ch.get_variable("X")

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.answer("510 Invalid or unknown command")
    await fake.answer("520-Invalid command syntax.  Proper usage follows:",
                      " Usage: GET VARIABLE <variablename>",
                      "        Returns 0 if <variablename> is not set.",
                      "520 End of proper usage.")
    await fake.answer("hello?")
    await fake.answer("200 result=1 (after)")

    _, outcome = await probe.next()
    assert isinstance(outcome, tuple)
    (unknown, usage, garbage), value = outcome
    assert value == "after"  # the 520 block was one answer
    assert unknown.code == 510
    assert "'FOO BAR'" in str(unknown)
    assert CHANNEL in str(unknown)
    assert usage.code == 520
    assert "'GET VARIABLE'" in str(usage)
    assert "Usage: GET VARIABLE <variablename>" in str(usage)
    assert garbage.code is None
    assert "'NOOP'" in str(garbage)
    assert "hello?" in str(garbage)
    assert not isinstance(unknown, AgiHangup | AgiClosed)


async def test_given_eof_during_a_command_when_waiting_then_agi_closed_now_and_for_later_commands(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        with pytest.raises(AgiClosed) as during:
            await ch.exec("Dial", "PJSIP/101,20")
        with pytest.raises(AgiClosed) as after:
            await ch.get_variable("DIALSTATUS")
        return during.value, after.value

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    await fake.command()
    fake.writer.close()

    _, outcome = await probe.next()
    assert isinstance(outcome, tuple)
    during, after = outcome
    assert "'EXEC Dial \"PJSIP/101,20\"'" in str(during)
    assert "Asterisk closed the connection" in str(during)
    assert "GET VARIABLE DIALSTATUS" in str(after)


async def test_given_a_timeout_when_no_answer_comes_then_timeout_error_and_the_connection_is_closed(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        with pytest.raises(TimeoutError) as timeout:
            await ch.exec("Dial", "PJSIP/101", timeout_s=0.05)
        with pytest.raises(AgiClosed):
            await ch.get_variable("DIALSTATUS")
        return str(timeout.value)

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    assert await fake.command() == 'EXEC Dial "PJSIP/101"'
    message = (await probe.next())[1]

    assert isinstance(message, str)
    assert "Dial" in message
    assert "0.05 s" in message
    await fake.closed_by_server()


async def test_given_a_cancelled_command_when_its_answer_comes_late_then_the_next_gets_its_own(
        start_server: StartServer, asterisk: Connect) -> None:
    cancel_now = asyncio.Event()

    async def body(ch: AgiChannel) -> object:
        dial = asyncio.create_task(ch.exec("Dial", "PJSIP/101"))
        await cancel_now.wait()
        dial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dial
        return await ch.get_variable("X")

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    assert await fake.command() == 'EXEC Dial "PJSIP/101"'
    cancel_now.set()
    assert await fake.command() == "GET VARIABLE X"
    await fake.send("200 result=0", "200 result=1 (mine)")  # Dial's, then GET VARIABLE's

    assert (await probe.next())[1] == "mine"


async def test_given_commands_from_two_tasks_when_concurrent_then_they_are_serialized(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        return await asyncio.gather(ch.get_variable("A"), ch.get_variable("B"))

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    first = await fake.command()
    with pytest.raises(TimeoutError):  # the second waits for the first one's answer
        async with asyncio.timeout(0.05):
            await fake.reader.readline()
    await fake.send("200 result=1 (a)")
    second = await fake.answer("200 result=1 (b)")

    assert (first, second) == ("GET VARIABLE A", ["GET", "VARIABLE", "B"])
    assert (await probe.next())[1] == ["a", "b"]


# -- the handler and the server ------------------------------------------------------------
async def test_given_a_handler_raising_then_it_is_logged_once_closed_and_the_next_is_served(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    async def body(ch: AgiChannel) -> object:
        if probe.calls == 1:
            raise RuntimeError("boom")
        return "fine"

    probe = Probe(body)
    server = await start_server(probe)
    failing = await asterisk(server, header("inbound", "74951234567"))

    await failing.closed_by_server()
    _, error = await probe.next_outcome()
    assert isinstance(error, RuntimeError)
    await asterisk(server, header("answered", "c1"))
    channel, outcome = await probe.next()

    assert (channel.script, outcome) == ("answered", "fine")
    [logged] = records(caplog, logging.ERROR)
    assert logged.exc_info is not None
    assert logged.exc_info[1] is error
    assert CHANNEL in logged.getMessage()
    assert "'inbound'" in logged.getMessage()


async def test_given_a_cancelled_handler_when_serving_then_it_is_closed_and_not_logged_as_failed(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    async def body(ch: AgiChannel) -> object:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # as AgiCalls.stop() does with the session's task
        await asyncio.Event().wait()
        return None

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    _, outcome = await probe.next_outcome()
    await fake.closed_by_server()

    assert isinstance(outcome, asyncio.CancelledError)
    assert not records(caplog, logging.ERROR)


async def test_given_open_sessions_when_stopping_then_all_are_closed_stuck_handlers_cancelled(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    stuck_started = asyncio.Event()

    async def body(ch: AgiChannel) -> object:
        if ch.script == "dial":
            try:
                return await ch.exec("Dial", "PJSIP/101")
            except AgiClosed as exc:
                return exc
        stuck_started.set()
        await asyncio.Event().wait()  # not in a command: only a cancel ends it
        return None

    probe = Probe(body)
    server = await start_server(probe)
    idle = await asterisk(server, b"")
    dialing = await asterisk(server, header("dial"))
    await dialing.command()
    stuck = await asterisk(server, header("stuck"))
    async with asyncio.timeout(2):
        await stuck_started.wait()
    assert server.sessions == 3  # accepted in order: the idle one before the others
    loop = asyncio.get_running_loop()
    started = loop.time()

    await asyncio.gather(server.stop(timeout_s=0.2), server.stop(timeout_s=0.2))

    assert loop.time() - started < 1
    assert server.sessions == 0
    for fake in (idle, dialing, stuck):
        await fake.closed_by_server()
    outcomes = {ch.script: outcome for ch, outcome in
                [await probe.next_outcome(), await probe.next_outcome()]}
    assert isinstance(outcomes["dial"], AgiClosed)
    assert "pbxbrain is stopping" in str(outcomes["dial"])
    assert isinstance(outcomes["stuck"], asyncio.CancelledError)
    assert not records(caplog, logging.ERROR)
    assert [r.getMessage() for r in records(caplog, logging.WARNING)] == [
        "FastAGI: cancelling 1 handlers still running 0.2 s after the stop"]
    await server.stop()  # again: nothing to do
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_given_max_sessions_in_progress_when_one_more_connects_then_it_is_closed_at_once(
        start_server: StartServer, asterisk: Connect, caplog: pytest.LogCaptureFixture) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def body(ch: AgiChannel) -> object:
        started.set()
        await release.wait()
        return None

    probe = Probe(body)
    server = await start_server(probe, max_sessions=1)
    first = await asterisk(server, header())
    async with asyncio.timeout(2):
        await started.wait()

    refused = await asterisk(server, header())
    await refused.closed_by_server()

    assert probe.calls == 1
    [warning] = records(caplog, logging.WARNING)
    assert "refused: 1 sessions in progress (max_sessions)" in warning.getMessage()
    release.set()
    await first.closed_by_server()
    await eventually(lambda: server.sessions == 0)
    await asterisk(server, header("again"))
    assert (await probe.next())[0].script == "inbound"
    assert (await probe.next())[0].script == "again"


async def test_given_a_port_in_use_when_starting_then_os_error_names_host_and_port(
        start_server: StartServer) -> None:
    first = await start_server(Probe())
    second = AgiServer(Probe(), "127.0.0.1", first.port)

    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
        await second.start()
    await second.stop()


# -- arguments are checked before anything is sent --------------------------------------------
def test_given_a_value_when_quoted_then_backslashes_and_quotes_are_escaped() -> None:
    value = 'a "b" \\c, d\t'
    assert agi_quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert asterisk_args("X " + agi_quote(value) + " Y") == ["X", value, "Y"]


@pytest.mark.parametrize("value", ["two\nlines", "cr\r", "nul\0"])
def test_given_a_line_break_when_quoting_then_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        agi_quote(value)


async def test_given_bad_names_or_lines_when_commanding_then_value_error_and_nothing_is_sent(
        start_server: StartServer, asterisk: Connect) -> None:
    async def body(ch: AgiChannel) -> object:
        attempts: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: ch.exec("Dial;Hangup", "x"), "application name"),
            (lambda: ch.exec("Dial App"), "application name"),
            (lambda: ch.exec(""), "application name"),
            (lambda: ch.exec("Dial", "a\nHANGUP"), "line break"),
            (lambda: ch.get_variable("A B"), "variable"),
            (lambda: ch.get_variable('X"'), "variable"),
            (lambda: ch.get_variable(""), "variable"),
            (lambda: ch.set_variable("A=B", "x"), "variable"),
            (lambda: ch.command("NOOP\nHANGUP"), "one line"),
            (lambda: ch.command("NOOP " + "x" * 2100), "at most 2047"),
            (lambda: ch.verbose("hi", 5), "level"),
        ]
        for attempt, problem in attempts:
            with pytest.raises(ValueError, match=problem):
                await attempt()
        return await ch.get_variable("CHANNEL(endpoint)")

    probe = Probe(body)
    server = await start_server(probe)
    fake = await asterisk(server, header())

    assert await fake.answer("200 result=1 (101)") == ["GET", "VARIABLE", "CHANNEL(endpoint)"]
    assert (await probe.next())[1] == "101"
