"""The console script `partman`: signal handlers first, the command line (and its imports) after.

Importing the command line takes a while (psycopg, pydantic, structlog, ...). A SIGTERM in that
time would end the process by the signal (exit -15), a SIGINT with a KeyboardInterrupt traceback.
So the handlers installed here only record the signal until the command takes over:
- `partman run` (the daemon) installs its own handlers and, finding a signal recorded, stops at
  once with exit 0 (nothing is started yet, nothing needs stopping);
- every other command calls release() when it starts its work, and a signal recorded meanwhile
  acts then as it would have a moment later.
Nothing heavy may be imported here (not even typing)."""

from __future__ import annotations

import signal
import sys
from types import FrameType

_previous: dict[int, object] = {}  # signal -> the handler it had before start-up
_pending: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def pending() -> int | None:
    """The first SIGTERM/SIGINT received during start-up, or None."""
    return _pending[0] if _pending else None


# what a command stopped by SIGINT or SIGTERM says (the command line prints it for SIGINT)
ADVICE = "A conversion resumes where it stopped when run again."


def _terminated(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM: the advice SIGINT gives, then the signal's default action, at once as before (the
    process ends by the signal: exit -15, 143 in a shell). Straight to the file descriptor: the
    signal may come in the middle of a write to sys.stderr."""
    import os

    os.write(2, f"partman: Terminated. {ADVICE}\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def release() -> bool:
    """Start-up is over (for a command other than the daemon): the handlers it had before come back,
    and a signal received meanwhile is delivered again to them. So SIGTERM ends the process by the
    signal itself, its default action (exit -15, 143 in a shell), after one line of advice, and SIGINT
    raises KeyboardInterrupt, which the command line reports as "Interrupted." with exit 130
    (128 + SIGINT), no traceback. True when it set SIGTERM's handler (for done())."""
    installed = False
    for signum, handler in _previous.items():
        signal.signal(signum, handler)
    _previous.clear()
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # an ignored or handled SIGTERM is left so
            signal.signal(signal.SIGTERM, _terminated)
            installed = True
    except ValueError:
        pass  # not the main thread (the command line called in-process): no handler can be set
    received = list(dict.fromkeys(_pending))
    _pending.clear()
    for signum in received:
        signal.raise_signal(signum)
    return installed


def done() -> None:
    """The command whose release() set SIGTERM's handler has finished (the command line may be called
    in-process, by the demo or a test): SIGTERM's default action again."""
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # an ignored signal stays ignored
            _previous[signum] = signal.signal(signum, _record)
    from .cli import main as cli_main  # the heavy imports

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
