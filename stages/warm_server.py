"""The warm server behind :mod:`stages.warm`: import once, fork one child per command.

::

    python -m stages.warm_server serve KEY   # started by the first command under STAGES_WARM=1
    python -m stages.warm_server status      # what users type (also: stop)

A server takes ``<key>.lock`` for its life, checks that its own key is ``KEY``, imports every
stage module and then forgets this project's own modules (a child imports them afresh from the
command's ``sys.path``, so an edit is seen at once; third-party modules stay imported), listens
on ``<key>.sock`` (mode 0600, commands of other users refused) and writes ``<key>.json``. Per
request it forks a child, answers its pid, and when it ends sends its wait status; it kills the
child (SIGTERM) when the command goes away. It exits after ``STAGES_WARM_IDLE`` seconds with no
child running, or, on SIGTERM (``stop``), once its children have ended.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NoReturn

from stages.warm import BUSY, CHILD_MARK, ENV_IDLE, PROJECT, die_of, runtime_dir, server_key

DEFAULT_IDLE_S = 600.0
#: The default seed of torch's CPU generator in a fresh process (what a child starts from).
TORCH_DEFAULT_SEED = 67280421310721


def forget_project() -> None:
    """Drop this project's modules (``stages``, ``stages.*``) from ``sys.modules``."""
    for name in [n for n in sys.modules if n == "stages" or n.startswith("stages.")]:
        del sys.modules[name]


def preload() -> dict[str, str]:
    """Import every stage module (not the tools: bench, params, deps), forget the project's own
    modules, and return the environment variables those imports added (a child gets them too,
    unless its command sets them)."""
    before = dict(os.environ)
    from stages.cli import COMMANDS, TOOLS

    for name, (module, _) in COMMANDS.items():
        if name not in TOOLS:
            importlib.import_module(module)
    forget_project()
    return {k: v for k, v in os.environ.items() if k not in before}


def serve(key: str) -> int:
    """Serve ``key`` until idle or stopped; exit code (``BUSY``: another server holds it)."""
    folder = runtime_dir()
    lock = open(folder / f"{key}.lock", "w")  # noqa: SIM115 (held for the server's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return BUSY
    if server_key() != key:
        print(f"stages.warm: this server's key is not {key} (another interpreter or environment)")
        return 2
    added = preload()
    path, info = folder / f"{key}.sock", folder / f"{key}.json"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    record = {"pid": os.getpid(), "project": PROJECT, "started": time.time(), "key": key}
    info.write_text(json.dumps(record))
    print(f"stages.warm: serving {PROJECT} as pid {os.getpid()}", flush=True)
    try:
        Server(listener, path, added, lock).run(float(os.environ.get(ENV_IDLE, DEFAULT_IDLE_S)))
    finally:
        for leftover in (path, info):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return 0


class Server:
    """The accept / fork / reap loop (single-threaded; SIGCHLD and SIGTERM wake it)."""

    def __init__(self, listener: socket.socket, path: Path, added: dict[str, str], lock):
        self.listener, self.path, self.added, self.lock = listener, path, added, lock
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.sel = selectors.DefaultSelector()

    def run(self, idle_s: float) -> None:
        """Serve until ``idle_s`` seconds pass with no child, or until stopped and drained."""
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        last = time.monotonic()
        while not (self.stopping and not self.children):
            busy = bool(self.children)  # idle time counts from the moment the last child ended
            timeout = None if busy else max(0.0, idle_s - (time.monotonic() - last))
            for key, _ in self.sel.select(timeout=timeout):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self.wake_r.recv(4096)
                else:
                    self._gone(key.fileobj, key.data)
            self._reap()
            if busy or self.children:
                last = time.monotonic()
            elif time.monotonic() - last >= idle_s:
                return

    def _stop(self, *_) -> None:
        self.stopping = True
        if self.listener.fileno() >= 0:
            self.sel.unregister(self.listener)
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            if _peer_uid(conn) not in (None, os.getuid()):
                raise PermissionError("another user's command")
            refusal = fork_refusal()
            if refusal:
                raise ValueError(refusal)
            request, fds = _read_request(conn)
        except (OSError, ValueError) as err:
            with contextlib.suppress(OSError):
                conn.sendall(f"error {err}\n".encode())
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            others = [self.listener, self.wake_r, self.wake_w, conn, *self.children.values()]
            others.append(self.lock)  # a child must not keep the server's lock once it is gone
            run_child(request, fds, others, self.added)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.sel.register(conn, selectors.EVENT_READ, pid)
        with contextlib.suppress(OSError):
            conn.sendall(f"pid {pid}\n".encode())

    def _gone(self, conn: socket.socket, pid: int) -> None:
        """The command's end is readable: it went away (EOF), so its child must go too."""
        with contextlib.suppress(OSError):
            if conn.recv(1):
                return
        self.sel.unregister(conn)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {status}\n".encode())
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn)
            conn.close()


def fork_refusal() -> str | None:
    """Why this server must not fork now (None: it may): a CUDA context does not survive a
    fork, so a server where one exists sends every command back to run cold."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialized in the server, a forked child could not use it"
    return None


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # the folder's 0700 mode is the guard there
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(30)
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    try:
        while len(head) < 8:
            more = conn.recv(8 - len(head))
            if not more:
                raise ValueError("truncated request")
            head += more
        (size,) = struct.unpack("!Q", head)
        payload = b""
        while len(payload) < size:
            more = conn.recv(min(1 << 20, size - len(payload)))
            if not more:
                raise ValueError("truncated request")
            payload += more
        request = json.loads(payload)
        if len(fds) != 3 or not {"argv", "cwd", "env", "path", "umask"} <= request.keys():
            raise ValueError("malformed request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def run_child(request: dict, fds: list[int], others: list, added: dict[str, str]) -> NoReturn:
    """In the forked child: become the command (streams, folder, environment, fresh project
    modules and random state) and run ``python -m stages``; never returns."""
    code = 70  # EX_SOFTWARE, should the set-up itself fail
    try:
        signal.set_wakeup_fd(-1)
        for item in others:  # sockets and the lock file: the server's, not the command's
            item.close()
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update({**added, **request["env"]})
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        forget_project()
        importlib.invalidate_caches()
        fresh_random_state()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError):
                stream.reconfigure(line_buffering=stream is sys.stderr or stream.isatty())
        setattr(sys, CHILD_MARK, True)
        code = _run_stages()
    finally:
        _exit(code)


def fresh_random_state() -> None:
    """The random state a fresh process starts with: torch's default seed, fresh entropy for
    numpy's global generator (``random`` reseeds itself after a fork, by its own at-fork hook)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.random.default_generator.manual_seed(TORCH_DEFAULT_SEED)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


def _run_stages() -> int:
    """``python -m stages`` here; its exit code (``-SIGINT`` for an uncaught Ctrl-C)."""
    try:
        runpy.run_module("stages", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit(code: int) -> NoReturn:
    """Exit as the interpreter does: join threads, run atexit handlers, flush; a negative code
    is the signal to die of."""
    with contextlib.suppress(BaseException):
        threading._shutdown()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if code < 0:
        die_of(-code)
    os._exit(code & 0xFF)


def stop_all() -> list[int]:
    """SIGTERM every running server of this user (each ends once its children have); their
    pids."""
    stopped = []
    for record in status():
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
            stopped.append(record["pid"])
    return stopped


def status() -> list[dict]:
    """The running servers' records (pid, project, started, key)."""
    out = []
    for info in sorted(runtime_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(info.read_text())
            os.kill(record["pid"], 0)
            out.append(record)
    return out


def main(argv: list[str]) -> None:
    """``serve KEY`` | ``status`` | ``stop``."""
    if argv[:1] == ["serve"] and len(argv) == 2:
        sys.exit(serve(argv[1]))
    if argv == ["status"]:
        for r in status():
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
            print(f"pid {r['pid']}  since {started}  {r['project']}")
        return
    if argv == ["stop"]:
        pids = stop_all()
        print(f"stopped {len(pids)} server(s)" + (f": {pids}" if pids else ""))
        return
    sys.exit("usage: python -m stages.warm_server status | stop")


if __name__ == "__main__":
    main(sys.argv[1:])
