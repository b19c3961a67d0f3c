"""How SIGTERM turns into a request to stop at the next safe point instead of killing the process.

    with sigterm_requests_stop() as stop:
        while work_left() and not stop.requested:
            do_one_step()  # e.g. one training batch
        save_state()

Inside the block SIGTERM only sets `stop.requested`; the loop checks it where stopping loses nothing
(the training loop: after the current batch, then it writes a resumable checkpoint). Code whose
state on disk is always complete passes `interrupt`: the handler then also raises the exception it
returns, so the block stops at once. Leaving the block restores the previous handler.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class StopFlag:
    requested = False


@contextlib.contextmanager
def sigterm_requests_stop(interrupt: Callable[[], BaseException] | None = None) -> Iterator[StopFlag]:
    """While the block runs, SIGTERM sets the yielded flag's `requested` (and raises `interrupt()`,
    if given) instead of terminating the process."""
    stop = StopFlag()
    # signal handlers can only be set from the main thread (not, e.g., inside a web app's worker)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum, frame):
        stop.requested = True
        if interrupt is not None:
            raise interrupt()

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
