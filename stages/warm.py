"""Warm stage processes: a server keeps torch and transformers imported, each command forks.

Every ``python -m stages <command>`` is a fresh process that spends about 5 s importing torch,
transformers and the rest before it computes anything, and a ``dvc repro`` of the demo starts
about 75 of them. With ``STAGES_WARM=1`` a command instead asks a per-user server to fork a
child that runs it: the child takes the command's arguments, working directory, environment,
umask and standard streams (passed as file descriptors), imports this project's code afresh
(only third-party modules are inherited from the server), and its exit status, or the signal
that killed it, becomes the command's. What a stage computes does not change::

    STAGES_WARM=1 dvc repro            # the first stage starts a server (its ~5 s import, once)
    python -m stages.warm_server status   # the servers running, one line each
    python -m stages.warm_server stop     # stop them (each also exits after STAGES_WARM_IDLE s idle)

Environment: ``STAGES_WARM=1`` turns it on; ``STAGES_WARM_IDLE`` idle seconds before a server
exits (default 600); ``STAGES_WARM_DIR`` the private folder of its sockets, locks and logs
(default ``$XDG_RUNTIME_DIR`` or the temp folder, ``stages-warm-<uid>``). A server serves one
*key*: the interpreter and its flags, ``sys.path``, the install folders' modification times,
the project's folder, the warm modules' own modification times and the whole environment except
DVC's per-stage ``DVC_*`` variables (what libraries read when imported); any difference starts
another server. Under ``torchrun`` or ``accelerate launch`` (``RANK``, ``WORLD_SIZE`` or
``LOCAL_RANK`` set) a command always runs in its own process, and whenever the server cannot be
reached or started it does so too, after one line on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ENV_ON, ENV_IDLE, ENV_DIR = "STAGES_WARM", "STAGES_WARM_IDLE", "STAGES_WARM_DIR"
#: Set on ``sys`` in a forked child, so its ``python -m stages`` does not delegate again.
CHILD_MARK = "_stages_warm_child"
#: Environment variables left out of the key: the shell's, and DVC's per-stage ones.
KEY_IGNORES = ("PWD", "OLDPWD", "SHLVL", "_")
PROJECT = str(Path(__file__).resolve().parent.parent)  # the folder holding the stages package
START_TIMEOUT_S = 180.0
#: The exit code of a server that found another one holding its key's lock.
BUSY = 3


def runtime_dir() -> Path:
    """The private folder of the servers' sockets (created 0700; refused if anyone else can
    read it or owns it)."""
    folder = os.environ.get(ENV_DIR) or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"stages-warm-{os.getuid()}"
    )
    path = Path(folder)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{ENV_DIR}: {path} must be owned by you with mode 0700")
    return path


def server_key() -> str:
    """What a server must share with a command to run it: see the module docstring."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_IGNORES and not k.startswith("DVC_")}
    folders = sysconfig.get_paths()
    installs = sorted({folders["purelib"], folders["platlib"]})
    stamps = [(p, os.stat(p).st_mtime_ns if os.path.isdir(p) else None) for p in installs]
    me = [os.stat(Path(__file__).with_name(f)).st_mtime_ns for f in ("warm.py", "warm_server.py")]
    blob = [sys.executable, sys.version, tuple(sys.flags), sys.warnoptions, sys._xoptions]
    blob += [sys.path, PROJECT, env, stamps, me]
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def enabled() -> bool:
    """Whether this ``python -m stages`` should ask a warm server to run it."""
    return (
        os.environ.get(ENV_ON) == "1"
        and not getattr(sys, CHILD_MARK, False)
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
        and not ({"RANK", "WORLD_SIZE", "LOCAL_RANK"} & os.environ.keys())
    )


def delegate() -> None:
    """Run this command in a warm child and exit as it did; return (to run it here, cold)
    when warm mode is off or no server can be reached."""
    if not enabled():
        return
    try:
        folder = runtime_dir()
        key = server_key()
        conn = _connect(folder / f"{key}.sock") or _start_server(folder, key)
        pid = _submit(conn)
    except (OSError, ValueError) as err:
        print(f"stages.warm: running cold ({err})", file=sys.stderr)
        return
    _exit_like(_wait_child(conn, pid))


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _start_server(folder: Path, key: str) -> socket.socket:
    """Start a detached server for ``key`` and connect once it listens (after its imports)."""
    log = open(folder / f"{key}.log", "ab")  # noqa: SIM115 (the server's own stdout/stderr)
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stages.warm_server", "serve", key],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _connect(folder / f"{key}.sock")
        if conn is not None:
            return conn
        code = proc.poll()
        if code not in (None, BUSY):  # BUSY: another command is starting the same server
            raise OSError(f"the server exited with {code}, see {folder / f'{key}.log'}")
        time.sleep(0.05)
    raise OSError(f"no server listening after {START_TIMEOUT_S:.0f} s")


def _submit(conn: socket.socket) -> int:
    """Send argv, cwd, environment, sys.path, umask and fds 0-2; the server answers the pid."""
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "path": sys.path,
        "umask": umask,
    }
    payload = json.dumps(request).encode()
    with contextlib.ExitStack() as stack:
        fds = []
        for fd in (0, 1, 2):
            try:
                os.fstat(fd)
                fds.append(fd)
            except OSError:  # a closed standard stream: give the child /dev/null instead
                fds.append(stack.enter_context(open(os.devnull, "r+b")).fileno())
        socket.send_fds(conn, [struct.pack("!Q", len(payload))], fds)
    conn.sendall(payload)
    answer = _readline(conn)
    if not answer.startswith("pid "):
        raise ValueError(f"the server refused: {answer or 'no answer'}")
    return int(answer.split()[1])


def _readline(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def _wait_child(conn: socket.socket, pid: int) -> int:
    """Forward the signals a command gets to the child; its wait status (-1 if the server went
    away, after ending the child)."""

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    answer = _readline(conn)
    if answer.startswith("exit "):
        return int(answer.split()[1])
    with contextlib.suppress(ProcessLookupError):  # the server died: end its orphan too
        os.kill(pid, signal.SIGTERM)
    return -1


def _exit_like(status: int) -> None:
    """Exit with the child's code, or die of the signal that killed it."""
    if status == -1:
        print("stages.warm: the server went away before the command ended", file=sys.stderr)
        os._exit(1)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        die_of(-code)
        code = 128 - code
    os._exit(code)


def die_of(signum: int) -> None:
    """End this process by ``signum`` with its default action, as the child ended."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
