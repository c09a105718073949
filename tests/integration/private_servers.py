"""Short-lived private Redis and PostgreSQL servers for outage tests.

The project's servers (services/services.sh) are shared by every test and
session on the machine, so a test must never stop them. A test that needs a
store to go away starts its own server on a free port with these helpers,
stops and restarts it as it likes, and always removes it (context managers).
Same binaries as services.sh (``redis-server``; PostgreSQL from ``PG_BIN``,
run as the ``postgres`` user when we are root).
"""
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BIN = pathlib.Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound and released: the kernel will not
    hand it to a listener by itself)."""
    return free_port()


def _wait_for_port(port: int, up: bool, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'} in {timeout_s}s")


class PrivateRedis:
    """``redis-server`` on a free port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc = None

    def start(self):
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _wait_for_port(self.port, up=True)

    def stop(self):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None
        _wait_for_port(self.port, up=False)


@contextlib.contextmanager
def private_redis():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PrivatePostgres:
    """A throw-away cluster (initdb) on a free port; trust logins on
    127.0.0.1 only. ``stop()`` is ``pg_ctl stop -m fast`` (SIGINT to the
    postmaster: sessions are cut, in-flight transactions roll back)."""

    def __init__(self, root: pathlib.Path):
        self.port = free_port()
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=3"
        self._root = root
        self._data = root / "data"
        self._run = root / "run"
        self._proc = None
        self._as_pg = []
        if os.geteuid() == 0:
            self._as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def init(self):
        self._data.mkdir(mode=0o700)
        self._run.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres", "postgres")
            shutil.chown(self._data, "postgres", "postgres")
            shutil.chown(self._run, "postgres", "postgres")
        subprocess.run([*self._as_pg, str(PG_BIN / "initdb"), "-D", str(self._data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)

    def start(self):
        self._proc = subprocess.Popen(
            [*self._as_pg, str(PG_BIN / "postgres"), "-D", str(self._data),
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
             "-c", f"unix_socket_directories={self._run}", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1",
                              "-p", str(self.port)], check=False).returncode != 0:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"private PostgreSQL on port {self.port} did not start")
            time.sleep(0.1)

    def stop(self):
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(timeout=60)
            self._proc = None


@contextlib.contextmanager
def private_postgres():
    root = pathlib.Path(tempfile.mkdtemp(prefix="iheard-private-pg-"))
    server = PrivatePostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
