"""Threads that start commands while the event loop goes on.

`subprocess.Popen` returns only once the child has exec'd: with vfork the caller is suspended
until then, and on a busy machine the new child may wait milliseconds for a CPU. Started on the
loop, every other request waits with it (with 50 clients, that wait was most of the daemon's
time). A command started while others run is therefore handed to one of a few threads; one
started while none runs is started on the loop, where it costs no thread handoff.

The threads are started with the daemon, never per command: under a sandbox's process limit
(a fork bomb in user code) a new thread may not start, and commands must then still fail
cleanly. `_posixsubprocess` lets go of the GIL while it waits for the child, so the loop runs
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import subprocess
import threading

log = logging.getLogger("picod.spawn")

# Under 50 clients on a busy 2-core machine, 8 threads served about 25% more than 4, and 16 no more
# than 8; each idle thread costs little (about 15 KiB of PSS).
SPAWN_THREADS = 8


class Spawner:
    """`start(argv, **popen_kwargs)` answers a future of the Popen; the file descriptors named in
    `close_after` are closed once the spawn is over, whatever its outcome (the child has its
    copies by then)."""

    def __init__(self, threads: int = SPAWN_THREADS):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.active = 0  # commands started and not yet collected, kept by the caller
        self.threads = 0
        for i in range(threads):
            try:
                threading.Thread(target=self._work, name=f"picod-spawn-{i}", daemon=True).start()
            except RuntimeError as exc:  # no thread to be had: start what we have, or inline
                log.warning("started %d of %d command-spawning threads: %s", i, threads, exc)
                break
            self.threads += 1

    def should_wait_for(self) -> bool:
        """Whether a spawn now had better be handed to a thread: other commands are in flight."""
        return self.threads > 0 and self.active > 0

    def start(self, argv: list[str], close_after: tuple[int, ...], **popen_kwargs) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, argv, close_after, popen_kwargs))
        return future

    def stop(self) -> None:
        for _ in range(self.threads):
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, argv, close_after, popen_kwargs = item
            try:
                outcome, failed = subprocess.Popen(argv, **popen_kwargs), False
            except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting coroutine as is
                outcome, failed = exc, True
            finally:
                for fd in close_after:
                    os.close(fd)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop is closed: the daemon is going away
                if not failed:
                    outcome.kill()


def _settle(future: asyncio.Future, outcome, failed: bool) -> None:
    if future.done():  # cancelled by someone: nobody collects this child
        if not failed:
            outcome.kill()
    elif failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
