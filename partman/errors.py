"""User-facing errors: one paragraph that names the problem and what to do."""


class PartmanError(Exception):
    """A failure the user can act on. The CLI prints it (no traceback) and exits 1."""

    exit_code = 1


class UsageError(PartmanError):
    """Bad flags or arguments. Exit code 2."""

    exit_code = 2


class LockTimeoutGaveUp(PartmanError):
    """A DDL could not get its lock within the allowed attempts."""


def sentences(text: str) -> str:
    """A message of several lines (libpq's: "Connection refused" then "Is the server running ...?")
    as one paragraph of sentences, ending with exactly one stop."""
    out = ""
    for line in str(text).splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        if out and out[-1] not in ".?!:;,":
            out += "."
        out = f"{out} {line}" if out else line
    out = out.rstrip(" :;,")
    return out if not out or out[-1] in ".?!" else out + "."
