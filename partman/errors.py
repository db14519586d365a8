"""User-facing errors: one paragraph that names the problem and what to do."""


class PartmanError(Exception):
    """A failure the user can act on. The CLI prints it (no traceback) and exits 1."""

    exit_code = 1


class UsageError(PartmanError):
    """Bad flags or arguments. Exit code 2."""

    exit_code = 2


class LockTimeoutGaveUp(PartmanError):
    """A DDL could not get its lock within the allowed attempts."""
