"""Named crash points for tests. Armed by `PARTMAN_FAILPOINTS`, e.g.
`convert.copy.after_batch=3:kill,archive.after_upload=1:raise,convert.swap.locked=1:sleep(5)`:
`name=N:action` fires on the N-th time the point is reached (default 1). Actions: `kill`
(SIGKILL this process), `raise` (an exception), `sleep(S)`. Disarmed, `hit()` is a dict lookup."""

from __future__ import annotations

import os
import re
import signal
import time

_ARMED: dict[str, tuple[int, str]] = {}
_COUNTS: dict[str, int] = {}


class FailpointError(RuntimeError):
    pass


def arm_from_env() -> None:
    _ARMED.clear()
    _COUNTS.clear()
    spec = os.environ.get("PARTMAN_FAILPOINTS", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("=")
        count_s, _, action = rest.partition(":") if ":" in rest else ("1", "", rest or "raise")
        _ARMED[name.strip()] = (int(count_s or 1), action.strip() or "raise")


def arm(name: str, action: str = "raise", count: int = 1) -> None:
    _ARMED[name] = (count, action)
    _COUNTS.pop(name, None)


def disarm() -> None:
    _ARMED.clear()
    _COUNTS.clear()


def hit(name: str) -> None:
    if not _ARMED or name not in _ARMED:
        return
    n = _COUNTS[name] = _COUNTS.get(name, 0) + 1
    count, action = _ARMED[name]
    if n != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    m = re.fullmatch(r"sleep\((\d+(?:\.\d+)?)\)", action)
    if m:
        time.sleep(float(m.group(1)))
        return
    raise FailpointError(f"failpoint {name} fired")


arm_from_env()
