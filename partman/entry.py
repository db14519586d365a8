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


def release() -> None:
    """Start-up is over (for a command other than the daemon): the handlers it had before come back,
    and a signal received meanwhile is delivered again to them. So SIGTERM ends the process by the
    signal itself, its default action (exit -15, 143 in a shell), and SIGINT raises KeyboardInterrupt,
    which the command line reports as "Interrupted." with exit 130 (128 + SIGINT), no traceback."""
    for signum, handler in _previous.items():
        signal.signal(signum, handler)
    _previous.clear()
    received = list(dict.fromkeys(_pending))
    _pending.clear()
    for signum in received:
        signal.raise_signal(signum)


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # an ignored signal stays ignored
            _previous[signum] = signal.signal(signum, _record)
    from .cli import main as cli_main  # the heavy imports

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
