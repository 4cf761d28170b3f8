"""
One worker process, server side: ``Worker`` puts together its process
(``v2d.workers._process``), its messages (``v2d.workers._client`` over the vocabulary of
``v2d.workers._messages``) and its restarts (``v2d.workers._restart``); its life is a
``WorkerState``: spawn -> handshake (``_handshake``) -> load -> serve, restarted after
a back-off when it dies while serving.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Dict, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from v2d.errors import FailedPrecondition, Unavailable
from v2d.workers import _bootstrap, _handshake, _wire
from v2d.workers._client import WireClient
from v2d.workers._messages import LoadedInfo, Op
from v2d.workers._process import CHILD_IN, CHILD_OUT, WorkerProcess, describe_exit
from v2d.workers._restart import RestartPolicy

if TYPE_CHECKING:
    from v2d.workers._model import WorkerModel
    from v2d.workers._pool import WorkerPool

__all__ = ["Worker", "WorkerState"]


def _child_prefix(shm: _wire.SharedMemory) -> str:
    """The shared-memory file prefix of the child (the parent's ends in -p, the child's in -c)."""
    return shm.prefix[:-2] + "-c"


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    IDLE = "idle"  # never started
    STARTING = "starting"  # spawned; handshake and load under way
    READY = "ready"  # serving
    STOPPING = "stopping"  # asked to end
    DEAD = "dead"  # ended when it should not have (or never started): restarts if it was serving
    STOPPED = "stopped"  # ended as asked


class Worker:
    """
    One child process serving one model: a ``WorkerProcess`` (the process), a
    ``WireClient`` (its messages) and a ``RestartPolicy`` (started again, after a
    back-off, when it dies while serving).
    """

    log = Logger()

    def __init__(self, pool: "WorkerPool", model: "WorkerModel", index: int) -> None:
        self.pool = pool
        self.model = model
        self.index = index
        self.state = WorkerState.IDLE
        self.process: Optional[WorkerProcess] = None
        self.client: Optional[WireClient] = None
        self.started_at = 0.0
        self.restarts = RestartPolicy(pool.reactor, pool.restart_initial, pool.restart_max, pool.stable_after)
        self.last_exit = ""
        self.peer: Dict[str, Any] = {}
        self._startup: Optional[Deferred] = None
        self.shm: Optional[_wire.SharedMemory] = None

    @property
    def label(self) -> str:
        return f"worker {self.index} of model '{self.model.name}'"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether its process runs."""
        return self.process is not None and self.process.running

    @property
    def load(self) -> int:
        """Requests and streams in flight (for least-busy dispatch)."""
        return self.client.load if self.client is not None else 0

    # -- starting -------------------------------------------------------------

    def start(self) -> Deferred:
        """Spawn, handshake and load; fires with the child's ``loaded`` info."""
        self.state = WorkerState.STARTING
        self.peer = {}
        d: Deferred = Deferred()
        self._startup = d
        self.shm = self.pool.shared_memory(self)
        python = self.model.python
        args = [python, "-I", "-c", _bootstrap.COMMAND, self.pool.code_zip, str(CHILD_IN), str(CHILD_OUT)]
        process = WorkerProcess(self.pool.reactor, self.model.name, self.index, self._data, self.ended)
        client = WireClient(process.write, self.shm, self._hello, self._metrics, self.protocol_error)
        self.process, self.client = process, client
        try:
            process.spawn(self.pool.reactor, python, args, self.pool.child_environ(self.model.environment))
        except Exception as e:
            self.state = WorkerState.DEAD
            self._startup = self.process = self.client = None
            return fail(Unavailable(f"{self.label} could not be started with {python}: {e}"))
        self.started_at = self.pool.reactor.seconds()
        self.pool.register(self)
        self.log.info("{label} started (pid {pid}, {python})", label=self.label, pid=self.pid, python=python)
        return d

    def _data(self, data: bytes) -> None:
        if self.client is not None:
            self.client.feed(data)

    def _metrics(self, batch: Any) -> None:
        self.pool.record_metrics(self.model, batch)

    def _fail_startup(self, exc: Exception) -> None:
        d, self._startup = self._startup, None
        if d is not None:
            d.errback(Failure(exc))

    def _hello(self, peer: Dict[str, Any]) -> None:
        if self.state is not WorkerState.STARTING or self.peer or self.client is None:
            return
        self.peer = peer
        problem = _handshake.incompatibility(self.pool.identity, peer)
        if problem is not None:
            self.client.send_json({"ok": False, "reason": problem})
            self._fail_startup(FailedPrecondition(f"model '{self.model.name}': {problem}"))
            self.close_input()
            return
        answer: Dict[str, Any] = {"ok": True}
        if self.shm is not None:
            answer.update(
                shm_prefix=_child_prefix(self.shm), shm_threshold=self.shm.threshold, shm_keep=self.shm.keep
            )
        self.client.send_json(answer)
        self.call(Op.LOAD, self.model.settings).addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, info: LoadedInfo) -> None:
        self.state = WorkerState.READY
        self.model.worker_loaded(self, info)
        wires = info.get("wires") or []
        if wires:
            self.log.info(
                "{label} loaded; it decodes and encodes small {wires} requests itself",
                label=self.label,
                wires=", ".join(wires),
            )
        else:
            self.log.info(
                "{label} loaded; the server decodes its requests (no usable protobuf in {python})",
                label=self.label,
                python=self.model.python,
            )
        d, self._startup = self._startup, None
        if d is not None:
            d.callback(info)

    def _load_failed(self, failure: Failure) -> None:
        exc = failure.value
        self._fail_startup(exc if isinstance(exc, Exception) else Unavailable(str(exc)))
        self.close_input()

    # -- requests -------------------------------------------------------------------

    def call(self, op: Op, body: Any = None) -> Deferred:
        """Send one request; a Deferred of its reply (cancelling it cancels the request)."""
        if self.client is None:
            return fail(Unavailable(f"{self.label} is not running"))
        return self.client.call(op, body)

    def settled(self) -> Deferred:
        """Fires once no request or stream is in flight at this worker (or it ended)."""
        return self.client.settled() if self.client is not None and self.running else succeed(None)

    def protocol_error(self, reason: str) -> None:
        self.log.error("{label}: broken wire ({reason}); stopping it", label=self.label, reason=reason)
        self.kill()

    # -- ending ---------------------------------------------------------------------

    def ended(self, reason: Failure) -> None:
        """Its process exited (``WorkerProcess`` calls this)."""
        how = describe_exit(reason)
        self.last_exit = how
        lived = self.pool.reactor.seconds() - self.started_at
        was = self.state
        self.pool.unregister(self)
        if self.shm is not None:
            self.shm.close()
            self.shm.sweep()
            _wire.SharedMemory(self.shm.directory, _child_prefix(self.shm), 0).sweep()
        if self.client is not None:
            self.client.fail_all(Unavailable(f"{self.label} (pid {self.pid}) {how}"))
        if self._startup is not None:
            tail = self.process.stderr_tail if self.process is not None else ()
            detail = "; its last output: " + " | ".join(list(tail)[-5:]) if tail else ""
            message = f"{self.label} {how} while starting ({self.model.python}){detail}"
            self._fail_startup(Unavailable(message))
        if was is WorkerState.READY and not self.model.unloading and not self.pool.stopping:
            self.state = WorkerState.DEAD
            self.log.error("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)
            self._schedule_restart(lived)
        else:
            stopped = was in (WorkerState.STOPPING, WorkerState.READY) or self.model.unloading
            self.state = WorkerState.STOPPED if stopped else WorkerState.DEAD
            self.log.info("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)

    def _schedule_restart(self, lived: float) -> None:
        delay = self.restarts.schedule(lived, self._restart)
        self.log.info("{label}: restarting in {delay}s", label=self.label, delay=delay)
        self.pool.restarting(self)

    def _restart(self) -> None:
        self.pool.restarted(self)
        if self.model.unloading or self.pool.stopping:
            return

        def failed(failure: Failure) -> None:
            self.log.error(
                "{label} failed to start again: {reason}", label=self.label, reason=str(failure.value)
            )
            if not (self.model.unloading or self.pool.stopping):
                self.state = WorkerState.DEAD
                self._schedule_restart(0.0)

        self.start().addCallbacks(
            lambda _: self.log.info("{label} is serving again", label=self.label), failed
        )

    def cancel_restart(self) -> None:
        self.restarts.cancel()
        self.pool.restarted(self)

    def exited(self) -> Deferred:
        """Fires once the child has exited (at once if there is none)."""
        return self.process.exited() if self.process is not None else succeed(None)

    def close_input(self) -> None:
        if self.process is not None:
            self.process.close_input()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> Deferred:
        """Close its input (it exits), TERM after a while, KILL after another; fires when exited."""
        self.cancel_restart()
        if not self.running:
            if self.state is not WorkerState.DEAD:
                self.state = WorkerState.STOPPED
            return succeed(None)
        assert self.process is not None
        self.state = WorkerState.STOPPING
        return self.process.stop(self.pool.term_after, self.pool.kill_after)

    def terminate(self) -> None:
        """TERM now (KILL ``kill_after`` s later), unless that is under way already."""
        if self.process is not None:
            self.process.terminate(self.pool.kill_after)
