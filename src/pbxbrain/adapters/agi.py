"""Our FastAGI server (Asterisk ``res_agi`` over TCP), on ``asyncio.start_server``.

Not panoramisk's: a client that sends half a header and closes makes that one spin at EOF
and freeze the event loop. Here the header has a deadline and a size limit, and EOF is
final everywhere. The protocol rules this module relies on:

* Asterisk connects and sends its environment, ``agi_<name>: <value>`` lines ended by an
  empty line. ``agi_network_script`` is the request's path (``inbound`` for
  ``agi://host:port/inbound``) and ``agi_arg_1``.. ``agi_arg_N`` the AGI's arguments.
* Then the server sends commands, one line each (at most 2047 bytes with its newline:
  Asterisk cuts longer lines), and each gets one answer: ``200 result=<int> [(<data>)]
  [rest]``, ``510`` (unknown command), ``511`` (not permitted: the channel hung up) or a
  ``520-`` block of usage lines ended by a ``520 `` line. Commands are strictly
  sequential: a blocking one (``EXEC Dial``) holds the line for as long as it runs.
* Asterisk parses a command's arguments with double quotes and backslash escapes, and
  ``EXEC`` passes only the one argument after the application's name to it.
* When the channel hangs up, a line ``HANGUP`` may come at any moment (also before a
  command's answer); it is not an answer. A dead channel still answers every command.
* Closing the connection ends the AGI; the dialplan goes on after ``AGI()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

log = logging.getLogger(__name__)

#: The longest line read from Asterisk after the header (a GET VARIABLE's value, a usage).
RESPONSE_LIMIT: Final = 64 * 1024
#: Connections the kernel holds for us before we accept them (capped by somaxconn).
ACCEPT_BACKLOG: Final = 1024
#: The longest command Asterisk reads whole (its ``AGI_BUF_LEN`` of 2048, minus the NUL).
MAX_COMMAND_BYTES: Final = 2047

_ENV_LINE: Final = re.compile(r"agi_([A-Za-z0-9_]+): ?(.*)", re.DOTALL)
_ARG_KEY: Final = re.compile(r"arg_([0-9]+)")
_APP_NAME: Final = re.compile(r"[A-Za-z0-9_]+")
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z0-9_()\-,.:/@;]+")  # HANGUPCAUSE(PJSIP/101-…)
_CODE: Final = re.compile(r"([0-9]{3})(?:[ -]|$)")
_SUCCESS: Final = re.compile(r"200 result=(-?[0-9]+)(.*)", re.DOTALL)
_CLOSE_WAIT_S: Final = 1.0  # how long a close may wait for unsent data before aborting


class AgiError(Exception):
    """Protocol failure: a bad or unknown answer, a 5xx, or the connection closed.

    ``code`` is the answer's code (510, 520, ...), None when there was no valid answer.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class AgiHangup(AgiError):
    """The channel hung up (a 511 answer); ``AgiChannel.hung_up`` is True."""


class AgiClosed(AgiError):
    """Asterisk closed the connection (EOF), it broke, or it was closed on our side."""


@dataclass(frozen=True, slots=True)
class AgiResponse:
    """A command's ``200`` answer."""

    code: int  # 200
    result: int  # the result= integer
    data: str | None  # the text in parentheses, None if absent
    rest: str  # anything after, e.g. "endpos=1234" (stripped)


def agi_quote(value: str) -> str:
    """``value`` as one AGI argument: in double quotes, ``\\`` and ``"`` escaped.

    Raises ValueError for CR, LF (they would end the command) and NUL (it would cut it).
    """
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"an AGI argument cannot hold a line break or NUL: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _show(command: str) -> str:
    """A command for a message: quoted, and cut when very long."""
    return repr(command if len(command) <= 200 else command[:200] + "...")


class AgiChannel:
    """One FastAGI session: Asterisk's environment and a command channel.

    ``env`` has the header's keys without the ``agi_`` prefix (``env["channel"]``,
    ``env["uniqueid"]``, ``env["callerid"]``, ...), ``script`` is ``env["network_script"]``
    ("" when absent) and ``args`` are ``agi_arg_1``..``agi_arg_N`` in order. ``hung_up``
    turns True once Asterisk sent ``HANGUP`` or answered 511. Made by :class:`AgiServer`.
    """

    def __init__(self, env: Mapping[str, str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str) -> None:
        self.env: Mapping[str, str] = MappingProxyType(dict(env))
        self.script: str = env.get("network_script", "")
        numbered = sorted((int(m[1]), value) for key, value in env.items()
                          if (m := _ARG_KEY.fullmatch(key)))
        self.args: tuple[str, ...] = tuple(value for _, value in numbered)
        self.hung_up = False
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[str | None] | None = None  # the command outstanding
        self._discard = 0  # answers still due to cancelled commands: not the next one's
        self._closed: str | None = None  # why the connection is unusable, once it is
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline
        self._reader_task: asyncio.Task[None] | None = None

    #: :func:`agi_quote`, for building commands by hand with :meth:`command`.
    quote = staticmethod(agi_quote)

    def __repr__(self) -> str:
        return (f"<AgiChannel {self.env.get('channel', '?')} script={self.script!r} "
                f"peer={self.peer}>")

    # -- commands ----------------------------------------------------------------------
    async def command(self, line: str, *, timeout_s: float | None = None) -> AgiResponse:
        """Send one command and return its ``200`` answer.

        Raises AgiHangup on 511, AgiError on 510, 520 or an answer that is not AGI,
        AgiClosed when the connection is (or gets) closed, and TimeoutError when
        ``timeout_s`` passes first (the connection is then closed: its answer may still
        come). No deadline by default: ``EXEC Dial`` lasts the whole conversation.
        Commands are serialized: one is outstanding at a time. Cancelling one keeps the
        channel usable (its answer, when it comes, is dropped).
        """
        if "\n" in line or "\r" in line:
            raise ValueError(f"an AGI command is one line: {line!r}")
        data = line.encode() + b"\n"
        if len(data) > MAX_COMMAND_BYTES:
            raise ValueError(f"AGI command of {len(data)} bytes: Asterisk reads at most "
                             f"{MAX_COMMAND_BYTES} (with the newline): {_show(line)}")
        async with self._lock:
            text = await self._send(line, data, timeout_s)
        return self._parse(line, text)

    async def exec(self, app: str, args: str = "", *,
                   timeout_s: float | None = None) -> AgiResponse:
        """``EXEC app "args"``: run a dialplan application; ``result`` is what it returned
        (-2: no such application). ``args`` reach the application as they are (no
        ``${}`` substitution), parsed by its own argument rules (commas, quotes)."""
        if not _APP_NAME.fullmatch(app):
            raise ValueError(f"not a dialplan application name: {app!r}")
        return await self.command(f"EXEC {app} {agi_quote(args)}", timeout_s=timeout_s)

    async def get_variable(self, name: str) -> str | None:
        """``GET VARIABLE name``: its value, None when it is not set. ``name`` may be a
        function call such as ``CHANNEL(endpoint)``."""
        response = await self.command(f"GET VARIABLE {_check_variable(name)}")
        if response.result != 1:
            return None
        return response.data if response.data is not None else ""

    async def set_variable(self, name: str, value: str) -> None:
        """``SET VARIABLE name "value"`` (``name`` as for :meth:`get_variable`)."""
        await self.command(f"SET VARIABLE {_check_variable(name)} {agi_quote(value)}")

    async def answer(self) -> None:
        """``ANSWER`` the channel; AgiError when Asterisk could not (result -1)."""
        await self._expect_success("ANSWER")

    async def hangup(self) -> None:
        """``HANGUP`` the channel (AgiHangup when it is already gone)."""
        await self._expect_success("HANGUP")

    async def verbose(self, message: str, level: int = 1) -> None:
        """``VERBOSE "message" level``: a line in Asterisk's console/log (level 1-4)."""
        if not 1 <= level <= 4:
            raise ValueError(f"VERBOSE level must be 1-4, not {level}")
        await self.command(f"VERBOSE {agi_quote(message)} {level}")

    async def _expect_success(self, line: str) -> None:
        response = await self.command(line)
        if response.result == -1:
            raise AgiError(f"AGI command {_show(line)} failed on {self._where()} "
                           "(200 result=-1)", code=200)

    async def _send(self, line: str, data: bytes, timeout_s: float | None) -> str:
        if self._closed is not None:
            raise AgiClosed(f"AGI command {_show(line)} on {self._where()}: {self._closed}")
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        sent = False
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                log.debug("AGI %s << %s", self.peer, line)
                self._writer.write(data)
                sent = True
                await self._writer.drain()
                text = await waiter
        except TimeoutError:
            if not deadline.expired():  # a socket's own timeout: the connection broke
                self._close("the connection broke (timed out)")
                raise AgiClosed(f"AGI command {_show(line)} on {self._where()}: "
                                f"{self._closed}") from None
            self._close(f"closed after {_show(line)} got no answer in {timeout_s:g} s")
            raise TimeoutError(f"AGI command {_show(line)} on {self._where()} got no answer "
                               f"in {timeout_s:g} s; the connection is closed") from None
        except asyncio.CancelledError:
            if sent and (waiter.cancelled() or not waiter.done()):
                self._discard += 1  # its answer is still to come
            raise
        except OSError as exc:
            self._close(f"the connection broke: {exc!r}")
            raise AgiClosed(f"AGI command {_show(line)} on {self._where()}: "
                            f"{self._closed}") from exc
        finally:
            self._waiter = None
        if text is None:
            raise AgiClosed(f"AGI command {_show(line)} on {self._where()}: {self._closed}")
        return text

    def _parse(self, line: str, text: str) -> AgiResponse:
        if (head := _CODE.match(text)) is None:
            raise AgiError(f"AGI command {_show(line)} on {self._where()}: not an AGI "
                           f"answer: {text[:200]!r}")
        code = int(head[1])
        if code == 200:
            match = _SUCCESS.fullmatch(text)
            tail = match[2] if match is not None else ""
            if match is None or (tail and not tail[0].isspace()):
                raise AgiError(f"AGI command {_show(line)} on {self._where()}: unreadable "
                               f"answer {text[:200]!r}", code=200)
            tail = tail.lstrip()
            data: str | None = None
            if tail.startswith("("):
                # The data may hold parentheses itself: it ends at the line's last ')'.
                end = tail.rfind(")")
                data, tail = (tail[1:end], tail[end + 1:]) if end > 0 else (tail[1:], "")
            return AgiResponse(code=200, result=int(match[1]), data=data, rest=tail.strip())
        if code == 511:
            self.hung_up = True
            raise AgiHangup(f"AGI command {_show(line)} on {self._where()}: the channel hung "
                            f"up ({text})", code=511)
        if code == 510:
            raise AgiError(f"AGI command {_show(line)} on {self._where()}: Asterisk does not "
                           f"know it ({text})", code=510)
        if code == 520:
            usage = " | ".join(part.strip() for part in text.split("\n")[1:-1] if part.strip())
            raise AgiError(f"AGI command {_show(line)} on {self._where()}: invalid syntax "
                           f"(520); usage: {usage or text}", code=520)
        raise AgiError(f"AGI command {_show(line)} on {self._where()}: {text[:200]!r}",
                       code=code)

    def _where(self) -> str:
        return f"{self.env.get('channel', '?')} (FastAGI {self.peer})"

    # -- the connection ------------------------------------------------------------------
    def _start(self) -> None:
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"agi-reader {self.peer}")

    async def _read_loop(self) -> None:
        """Lines from Asterisk: ``HANGUP`` marks the channel, the rest are answers."""
        reason = "Asterisk closed the connection"
        try:
            while (line := await self._next_line()) is not None:
                if line == "HANGUP":
                    if not self.hung_up:
                        log.debug("AGI %s: %s hung up", self.peer, self.env.get("channel"))
                    self.hung_up = True
                    continue
                if line.startswith("520-"):  # usage lines up to "520 End of proper usage."
                    lines = [line]
                    while not lines[-1].startswith("520 "):
                        if (more := await self._next_line()) is None:
                            return
                        lines.append(more)
                    line = "\n".join(lines)
                self._deliver(line)
        except _LineTooLong:
            reason = f"closed: Asterisk sent a line over {RESPONSE_LIMIT} bytes"
            log.warning("AGI %s (channel %s): %s", self.peer, self.env.get("channel"), reason)
        except OSError as exc:
            reason = f"the connection broke: {exc!r}"
        finally:
            self._close(reason)

    async def _next_line(self) -> str | None:
        """The next line (decoded, without its newline); None at EOF (final)."""
        while (end := self._buffer.find(b"\n", self._scanned)) < 0:
            if len(self._buffer) > RESPONSE_LIMIT:
                raise _LineTooLong
            self._scanned = len(self._buffer)
            chunk = await self._reader.read(RESPONSE_LIMIT)
            if not chunk:
                return None
            self._buffer += chunk
        raw = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        self._scanned = 0
        line = raw.decode("utf-8", errors="replace").removesuffix("\r")
        log.debug("AGI %s >> %s", self.peer, line)
        return line

    def _deliver(self, text: str) -> None:
        if self._discard:
            self._discard -= 1
            log.debug("AGI %s: dropped the answer of a cancelled command: %r", self.peer, text)
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            log.warning("AGI %s (channel %s): line from Asterisk with no command outstanding, "
                        "dropped: %r", self.peer, self.env.get("channel"), text[:200])
            return
        waiter.set_result(text)

    def _close(self, reason: str) -> None:
        """Make the channel unusable: fail the command outstanding, close the socket."""
        if self._closed is None:
            self._closed = reason
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._writer.close()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _aclose(self, reason: str) -> None:
        self._close(reason)
        if self._reader_task is not None:
            await asyncio.wait([self._reader_task], timeout=_CLOSE_WAIT_S)
        await _close_writer(self._writer)


class _LineTooLong(Exception):
    pass


def _check_variable(name: str) -> str:
    if not _VARIABLE_NAME.fullmatch(name):
        raise ValueError(f"not a channel variable or function name: {name!r}")
    return name


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close the connection; abort it when unsent data holds the close up."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT_S)
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # reset by the peer: closed anyway


def _peer_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "?")


AgiHandler = Callable[[AgiChannel], Awaitable[None]]


@dataclass(slots=True)
class _Session:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    channel: AgiChannel | None = None  # None while the header is read


class AgiServer:
    """A FastAGI server: each connection's header is read, then ``handler(channel)``
    runs in the connection's own task; the connection is closed when it returns.

    A header that is incomplete at EOF, too big, malformed or late (``header_timeout_s``)
    closes the connection without calling the handler (one WARNING line). Past
    ``max_sessions`` connections are closed at once (Asterisk still reports AGISTATUS=SUCCESS
    for a connection it made: the dialplan must read a variable pbxbrain sets, not that).
    """

    def __init__(self, handler: AgiHandler, host: str = "127.0.0.1", port: int = 4573, *,
                 header_timeout_s: float = 5.0, max_header_bytes: int = 16384,
                 max_sessions: int = 2000) -> None:
        if header_timeout_s <= 0 or max_header_bytes <= 0 or max_sessions <= 0:
            raise ValueError("header_timeout_s, max_header_bytes and max_sessions must be "
                             "positive")
        self._handler = handler
        self._host = host
        self._port = port
        self._header_timeout_s = header_timeout_s
        self._max_header_bytes = max_header_bytes
        self._max_sessions = max_sessions
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self._stopping = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind and listen (``port=0``: any free port, see :attr:`port`).

        Raises OSError naming host:port when it cannot bind.
        """
        if self._server is not None or self._stopping:
            raise RuntimeError("AgiServer.start() called twice")
        try:
            # A deep accept queue: Asterisk gives a connect 2 s (MAX_AGI_CONNECT), and
            # with asyncio's default of 100, a busy second at 80 calls/s overflowed it
            # (the caller then went to the safety net, the answer went untold).
            self._server = await asyncio.start_server(
                self._accept, self._host, self._port, limit=self._max_header_bytes,
                backlog=ACCEPT_BACKLOG)
        except OSError as exc:
            error = OSError(f"FastAGI server cannot listen on {self._host}:{self._port}: "
                            f"{exc}")
            error.errno = exc.errno
            raise error from exc
        self._port = int(self._server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The bound port (the configured one before :meth:`start`)."""
        return self._port

    @property
    def sessions(self) -> int:
        """Connections in progress (reading their header or running the handler)."""
        return len(self._sessions)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection (a command outstanding fails with
        AgiClosed), give handlers ``timeout_s`` to return, then cancel them. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self._server is not None:
                self._server.close()
            sessions = list(self._sessions.values())
            for session in sessions:
                if session.channel is not None:
                    session.channel._close("closed: pbxbrain is stopping")
                elif session.task is not None:
                    session.task.cancel()  # still reading its header
            tasks = [s.task for s in sessions if s.task is not None]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=timeout_s)
                if pending:
                    log.warning("FastAGI: cancelling %d handlers still running %g s after "
                                "the stop", len(pending), timeout_s)
                    for task in pending:
                        task.cancel()
                    _, pending = await asyncio.wait(pending, timeout=timeout_s)
                    if pending:
                        log.error("FastAGI: %d handlers ignore their cancellation",
                                  len(pending))
            if self._server is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), timeout_s)
        finally:
            self._stopped.set()

    # -- connections ---------------------------------------------------------------------
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        if self._stopping:
            writer.close()
            return
        if len(self._sessions) >= self._max_sessions:
            log.warning("FastAGI connection from %s refused: %d sessions in progress "
                        "(max_sessions)", peer, len(self._sessions))
            writer.close()
            return
        session = _Session(writer)
        # Our own task (not start_server's): its end, cancelled or not, is ours to handle.
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, writer, peer, session), name=f"agi {peer}")
        session.task = task
        self._sessions[task] = session
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("FastAGI session %s failed", task.get_name(), exc_info=exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str, session: _Session) -> None:
        channel: AgiChannel | None = None
        try:
            env = await self._read_header(reader, peer)
            if env is None or self._stopping:
                return
            channel = session.channel = AgiChannel(env, reader, writer, peer)
            channel._start()
            try:
                await self._handler(channel)
            except asyncio.CancelledError:
                log.debug("FastAGI %s (channel %s): handler cancelled", peer,
                          channel.env.get("channel"))
                raise
            except Exception:
                log.exception("FastAGI handler failed on channel %s (script %r, args %r, "
                              "from %s)", channel.env.get("channel", "?"), channel.script,
                              channel.args, peer)
        finally:
            if channel is not None:
                await channel._aclose("closed: the handler returned")
            else:
                await _close_writer(writer)

    async def _read_header(self, reader: asyncio.StreamReader,
                           peer: str) -> dict[str, str] | None:
        """The environment (keys without ``agi_``), or None: then it logged why."""
        env: dict[str, str] = {}
        got = 0
        problem: str
        deadline = asyncio.timeout(self._header_timeout_s)
        try:
            async with deadline:
                while True:
                    try:
                        raw = await reader.readline()
                    except ValueError:  # no newline within the stream's limit
                        problem = (f"a header line over {self._max_header_bytes} bytes "
                                   "(max_header_bytes)")
                        break
                    got += len(raw)
                    if got > self._max_header_bytes:
                        problem = f"header over {self._max_header_bytes} bytes (max_header_bytes)"
                        break
                    if not raw.endswith(b"\n"):  # EOF: final, never read again
                        problem = "connection closed before the header's empty line"
                        break
                    line = raw[:-1].decode("utf-8", errors="replace").removesuffix("\r")
                    if not line:
                        return env
                    if (match := _ENV_LINE.fullmatch(line)) is None:
                        problem = f"not an 'agi_name: value' header line: {line[:80]!r}"
                        break
                    env[match[1]] = match[2]
        except TimeoutError:
            if not deadline.expired():
                problem = "the connection broke (timed out)"
            else:
                problem = f"no complete header within {self._header_timeout_s:g} s"
        except OSError as exc:
            problem = f"the connection broke: {exc!r}"
        log.warning("FastAGI connection from %s dropped: %s (%d header bytes received)",
                    peer, problem, got)
        return None
