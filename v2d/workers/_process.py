"""
One worker child as a process, and nothing else: spawn, exit, TERM then KILL, output.

``WorkerProcess`` is the ``ProcessProtocol`` of a child (as ``LocalWorker`` is in
Twisted's ``trial/_dist``): it spawns the child with the wire on two extra pipes
(child fds 3 and 4), hands what arrives on fd 4 to its ``received`` callable, writes
messages to fd 3, re-logs stdout and stderr line by line as structured events (keeping
the last lines of stderr for error messages), gives each caller its own Deferred of
the exit, and stops the child by closing its input, then TERM and KILL on the
injected clock. What the bytes mean is v2d.workers._client's business.
"""

from __future__ import annotations

import collections
import os
import signal
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from twisted.internet import error as twisted_error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from v2d._twisted import pipe_writer, writer_idle
from v2d.workers import _wire

__all__ = ["CHILD_IN", "CHILD_OUT", "WorkerProcess", "describe_exit"]

#: Child file descriptors of the wire: the child reads requests from 3, writes replies to 4.
CHILD_IN = 3
CHILD_OUT = 4


def describe_exit(reason: Failure) -> str:
    """How a process ended, in words: 'exited with code 3', 'was killed by signal 9 (SIGKILL)'."""
    value = reason.value
    sig = getattr(value, "signal", None)
    code = getattr(value, "exitCode", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    if code is None and isinstance(value, twisted_error.ProcessDone):
        code = 0
    return f"exited with code {code}"


def _write_to_child(transport: Any, chunks: List[Any]) -> None:
    """Send a message's chunks to the child: at once what the pipe takes, queued the rest."""
    done, part = _write_now(transport, chunks)
    for i in range(done, len(chunks)):
        chunk = chunks[i]
        if i == done and part:
            chunk = memoryview(chunk).cast("B")[part:]
        transport.writeToChild(CHILD_IN, chunk if isinstance(chunk, bytes) else bytes(chunk))


def _write_now(transport: Any, chunks: List[Any]) -> Tuple[int, int]:
    """
    Write what the child's input pipe takes right now, when nothing is queued before
    it: (whole chunks written, bytes of the next one written). What is left goes
    through the transport, which writes it when the pipe drains. Writing at once spares
    the transport's writable-then-not cycle, four ``epoll_ctl`` calls and a pass of the
    loop per request, on the server's busiest path.
    """
    writer = pipe_writer(transport, CHILD_IN)
    if writer is None or not writer_idle(writer):
        return (0, 0)
    views = [memoryview(c).cast("B") for c in chunks]
    try:
        n = os.writev(writer.fileno(), views[: _wire.IOV_MAX])
    except OSError:  # full (EAGAIN) or broken: the transport takes it from here
        return (0, 0)
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    return (i, n)


class WorkerProcess(ProcessProtocol):
    """
    A spawned child: ``received(data)`` gets the bytes of its wire, ``ended(reason)``
    is called once when it has exited. ``model`` and ``index`` name it in the log.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        model: str,
        index: int,
        received: Callable[[bytes], None],
        ended: Callable[[Failure], None],
    ) -> None:
        self.clock = clock
        self.model = model
        self.index = index
        self.received = received
        self.ended = ended
        self.pid: Optional[int] = None
        self.running = False
        self.stopping = False
        self.stderr_tail: Deque[str] = collections.deque(maxlen=20)
        self._partial: Dict[int, bytes] = {1: b"", 2: b""}
        self._exited: List[Deferred] = []
        self._term_call: Any = None
        self._kill_call: Any = None

    @property
    def label(self) -> str:
        return f"worker {self.index} of model '{self.model}'"

    def spawn(self, reactor: Any, python: str, args: List[str], env: Dict[str, str]) -> None:
        """Start the child (raises what ``spawnProcess`` raised); its stdin is closed."""
        transport = reactor.spawnProcess(
            self, python, args, env=env, childFDs={0: "w", 1: "r", 2: "r", CHILD_IN: "w", CHILD_OUT: "r"}
        )
        self.running = True
        self.pid = getattr(transport, "pid", None)
        try:
            transport.closeStdin()
        except Exception:
            pass

    # -- input and output ---------------------------------------------------------

    def write(self, chunks: List[Any]) -> None:
        """Write a message's chunks to the child's wire."""
        _write_to_child(self.transport, chunks)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CHILD_OUT:
            self.received(data)
        elif childFD in self._partial:
            lines = (self._partial[childFD] + data).split(b"\n")
            self._partial[childFD] = lines.pop()
            for line in lines:
                self.output(childFD, line)

    def output(self, fd: int, line: bytes) -> None:
        """One line of the child's stdout (1) or stderr (2), re-logged."""
        text = line.decode("utf-8", "replace").rstrip("\r")
        if fd == 2:
            self.stderr_tail.append(text)
        self.log.emit(
            LogLevel.warn if fd == 2 else LogLevel.info,
            "[{model} worker {worker}] {line}",
            model=self.model,
            worker=self.index,
            pid=self.pid,
            stream="stderr" if fd == 2 else "stdout",
            line=text,
        )

    # -- ending ---------------------------------------------------------------------

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.output(fd, rest)
        self._partial = {1: b"", 2: b""}
        self.running = False
        for call in (self._term_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()
        self._term_call = self._kill_call = None
        self.ended(reason)
        waiting, self._exited = self._exited, []
        for d in waiting:
            d.callback(None)

    def exited(self) -> Deferred:
        """Fires once the child has exited (at once if it is not running)."""
        if not self.running:
            return succeed(None)
        d: Deferred = Deferred()
        self._exited.append(d)
        return d

    def close_input(self) -> None:
        """Close the child's wire input: a child that reads it ends."""
        if self.running:
            try:
                self.transport.closeChildFD(CHILD_IN)  # type: ignore[union-attr]
            except Exception:
                pass

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except twisted_error.ProcessExitedAlready:
                pass

    def kill(self) -> None:
        self.signal("KILL")

    def stop(self, term_after: float, kill_after: float) -> Deferred:
        """
        Close its input (it exits), TERM ``term_after`` s later, KILL ``kill_after`` s
        after that; fires when it has exited.
        """
        if self.running and not self.stopping:
            self.stopping = True
            self.close_input()
            self._term_call = self.clock.callLater(term_after, self._escalate, kill_after)
        return self.exited()

    def terminate(self, kill_after: float) -> None:
        """TERM now (KILL ``kill_after`` s later), unless that is under way already."""
        if not self.running or self._kill_call is not None:
            return
        if self._term_call is not None and self._term_call.active():
            self._term_call.cancel()
        self._escalate(kill_after)

    def _escalate(self, kill_after: float) -> None:
        self._term_call = None
        self.log.warn("{label} (pid {pid}) did not exit; sending TERM", label=self.label, pid=self.pid)
        self.signal("TERM")
        self._kill_call = self.clock.callLater(kill_after, self._kill)

    def _kill(self) -> None:
        self._kill_call = None
        self.log.warn("{label} (pid {pid}) did not exit; sending KILL", label=self.label, pid=self.pid)
        self.kill()
