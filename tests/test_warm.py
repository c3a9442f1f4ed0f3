"""Warm stage processes (``STAGES_WARM=1``, :mod:`stages.warm`): a command runs in a child forked
from a server, and behaves as the same command run cold.

Most tests drive the real client and server modules inside a throwaway project whose ``stages``
package holds them, a stand-in ``cli`` and a ``probe`` command that reports what it sees (no
torch, so a server starts in a fraction of a second). The last test runs a real stage (``align``
on a tiny model) warm and cold and compares the files they write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stages.warm

REAL = Path(stages.warm.__file__).parent

CLI = '''
"""Stand-in for stages.cli: one command, ``probe``."""
import sys

COMMANDS = {"probe": ("stages.probe", "report what the command sees")}
TOOLS = set()  # commands that are not stages (the warm server does not preload them)


def main():
    from stages.probe import run

    run(sys.argv[1:])
'''

PROBE = """
import json, os, sys, time

VERSION = {version}


def run(argv):
    what = argv[1]
    if what == "show":
        umask = os.umask(0)
        os.umask(umask)
        print(json.dumps({{"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
            "argv": argv, "probe": os.environ.get("PROBE"), "umask": umask,
            "version": VERSION, "stdin": sys.stdin.read(), "file": __file__,
            "dvc_stage": os.environ.get("DVC_STAGE")}}))
        print("to stderr", file=sys.stderr)
    elif what == "exit":
        sys.exit(int(argv[2]))
    elif what == "raise":
        raise RuntimeError("boom")
    elif what == "nap":
        time.sleep(float(argv[2]))
    elif what == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(120)
"""


def write_project(root: Path, version: int = 1) -> Path:
    """A project whose ``stages`` package is the real warm client and server, the stand-in cli
    and the probe."""
    package = root / "stages"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("warm.py", "warm_server.py", "__main__.py"):
        shutil.copy(REAL / name, package / name)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(CLI)
    (package / "probe.py").write_text(PROBE.format(version=version))
    return root


@pytest.fixture
def project(tmp_path):
    """The throwaway project, its private runtime folder, and every server stopped after."""
    root = write_project(tmp_path / "proj")
    runtime = tmp_path / "run"
    yield root, runtime
    for info in runtime.glob("*.json"):
        pid = json.loads(info.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def environment(runtime: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STAGES_", "PYTHONPATH"))}
    env.update({"STAGES_WARM": "1", "STAGES_WARM_DIR": str(runtime), **extra})
    return env


def probe(root: Path, runtime: Path, *args: str, stdin: str = "", cwd: Path | None = None, **env):
    return subprocess.run(
        [sys.executable, "-m", "stages", "probe", *args],
        cwd=cwd or root,
        env=environment(runtime, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def sleeper(root: Path, runtime: Path) -> tuple[subprocess.Popen, int]:
    """A warm ``probe sleep`` command, and the pid of the child that runs it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages", "probe", "sleep"],
        cwd=root,
        env=environment(runtime),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline())


def warm_cli(root: Path, runtime: Path, what: str) -> str:
    """``python -m stages.warm_server <what>`` (status, stop) in the project; its stdout."""
    return subprocess.run(
        [sys.executable, "-m", "stages.warm_server", what],
        cwd=root,
        env=environment(runtime),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def servers(root: Path, runtime: Path) -> list[int]:
    return [int(line.split()[1]) for line in warm_cli(root, runtime, "status").splitlines()]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_command_runs_in_a_child_of_the_server_as_it_would_cold(project):
    """argv, working folder, environment, umask, stdin, stdout and stderr are the command's; the
    child's parent is the server, the same server for a second command."""
    root, runtime = project
    sub = root / "sub"
    sub.mkdir()
    first = probe(root, runtime, "show", "a b", stdin="piped in", PROBE="x")
    assert first.returncode == 0, first.stderr
    seen = json.loads(first.stdout)
    [server] = servers(root, runtime)
    assert seen["ppid"] == server
    assert seen["argv"] == ["probe", "show", "a b"]
    assert (seen["cwd"], seen["probe"], seen["stdin"]) == (str(root), "x", "piped in")
    umask = os.umask(0)
    os.umask(umask)
    assert seen["umask"] == umask
    assert first.stderr == "to stderr\n"
    second = json.loads(probe(root, runtime, "show", PROBE="x", DVC_STAGE="align@dpo-1").stdout)
    assert second["ppid"] == server and second["pid"] != seen["pid"]
    assert second["dvc_stage"] == "align@dpo-1"  # DVC's per-stage variables: same server


def test_exit_codes_and_errors_are_the_commands(project):
    root, runtime = project
    assert probe(root, runtime, "exit", "0").returncode == 0
    assert probe(root, runtime, "exit", "3").returncode == 3
    failed = probe(root, runtime, "raise")
    assert failed.returncode == 1
    assert "RuntimeError: boom" in failed.stderr
    assert len(servers(root, runtime)) == 1


def test_the_child_imports_the_projects_code_afresh(project):
    """Only third-party modules come from the server: an edit of the project is seen at once."""
    root, runtime = project
    assert json.loads(probe(root, runtime, "show").stdout)["version"] == 1
    write_project(root, version=2)
    seen = json.loads(probe(root, runtime, "show").stdout)
    assert seen["version"] == 2
    assert seen["file"] == str(root / "stages" / "probe.py")


def test_another_environment_gets_another_server(project):
    """Variables read at import time are part of the key: a different value, a second server."""
    root, runtime = project
    one = json.loads(probe(root, runtime, "show", PROBE="1").stdout)
    two = json.loads(probe(root, runtime, "show", PROBE="2").stdout)
    assert one["ppid"] != two["ppid"]
    assert sorted(servers(root, runtime)) == sorted([one["ppid"], two["ppid"]])


def test_an_edited_server_module_gets_a_new_server(project):
    """The warm modules' own modification times are in the key: an edit is never served by a
    server still running the old code."""
    root, runtime = project
    old = json.loads(probe(root, runtime, "show").stdout)["ppid"]
    server_file = root / "stages" / "warm_server.py"
    stamp = server_file.stat().st_mtime_ns + 10**9
    os.utime(server_file, ns=(stamp, stamp))
    assert json.loads(probe(root, runtime, "show").stdout)["ppid"] not in (old, os.getpid())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_command_reaches_the_child(project, sig):
    """The command forwards it and dies of it, as the child did (SIGINT: KeyboardInterrupt)."""
    root, runtime = project
    proc, child = sleeper(root, runtime)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -sig
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    wait_for(lambda: not _alive(child), "the child to end")


def test_a_killed_command_takes_its_child_with_it(project):
    root, runtime = project
    proc, child = sleeper(root, runtime)
    proc.kill()
    proc.wait(timeout=60)
    wait_for(lambda: not _alive(child), "the server to end the orphaned child")
    assert probe(root, runtime, "exit", "0").returncode == 0  # and the server still serves


def test_a_dead_server_is_replaced_at_once(project):
    """A server killed while a child runs: its command fails with one line, and the next
    command starts a new server at once (the child holds neither its lock nor its socket)."""
    root, runtime = project
    proc, child = sleeper(root, runtime)
    try:
        [server] = servers(root, runtime)
        os.kill(server, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert err == "stages.warm: the server went away before the command ended\n"
        again = probe(root, runtime, "show")
        assert again.returncode == 0 and again.stderr == "to stderr\n"
        assert json.loads(again.stdout)["ppid"] not in (server, os.getpid())
    finally:
        os.kill(child, signal.SIGKILL)


def test_an_idle_server_exits_and_stop_stops_one(project):
    """Idle time counts from the end of the last command, not from its start; then the server
    exits. ``stop`` stops a server at once."""
    root, runtime = project
    server = json.loads(probe(root, runtime, "show", STAGES_WARM_IDLE="2").stdout)["ppid"]
    assert probe(root, runtime, "nap", "3", STAGES_WARM_IDLE="2").returncode == 0
    seen = json.loads(probe(root, runtime, "show", STAGES_WARM_IDLE="2").stdout)
    assert seen["ppid"] == server  # the nap outlasted the idle time; the server waited after it
    wait_for(lambda: not _alive(server), "the idle server to exit")
    assert probe(root, runtime, "exit", "0", STAGES_WARM_IDLE="0.5").returncode == 0
    wait_for(lambda: not list(runtime.glob("*.sock")), "the idle server to exit")
    assert probe(root, runtime, "exit", "0").returncode == 0
    [server] = servers(root, runtime)
    assert warm_cli(root, runtime, "stop") == f"stopped 1 server(s): [{server}]\n"
    wait_for(lambda: not _alive(server), "the stopped server to exit")
    assert not list(runtime.glob("*.json"))


def test_without_a_server_the_command_runs_cold(project):
    """A runtime folder others can read is refused: one line on stderr, then the command runs in
    its own process. Under torchrun-style variables it runs cold without a word."""
    root, runtime = project
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    cold = probe(root, runtime, "show")
    assert cold.returncode == 0
    assert cold.stderr.startswith("stages.warm: running cold (STAGES_WARM_DIR:")
    assert json.loads(cold.stdout)["ppid"] == os.getpid()
    runtime.chmod(0o700)
    ranked = probe(root, runtime, "show", RANK="0", WORLD_SIZE="1")
    assert ranked.stderr == "to stderr\n"
    assert json.loads(ranked.stdout)["ppid"] == os.getpid()
    assert not list(runtime.glob("*.sock"))


def _alive(pid: int) -> bool:
    """Whether ``pid`` is running (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_server_with_cuda_initialized_refuses_to_fork(monkeypatch):
    """A CUDA context does not survive a fork: such a server sends commands back to run cold."""
    import types

    from stages.warm_server import fork_refusal

    for initialized in (False, True):
        cuda = types.SimpleNamespace(is_initialized=lambda i=initialized: i)
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
        assert (fork_refusal() is not None) == initialized
    monkeypatch.delitem(sys.modules, "torch")
    assert fork_refusal() is None
