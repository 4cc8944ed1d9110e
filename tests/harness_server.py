"""``python -m clip_benchmark.cli ARGV`` without paying the harness's imports (6-8 s) per run.

A server process imports the (hook-patched) harness once, with the tests' environment, and then
forks a child per run. The child is what ``python -m clip_benchmark.cli`` would be after its
imports: it moves to the run's folder, sets ``sys.argv`` as ``-m`` does (the module's path first)
and its stdin, stdout and stderr (``/dev/null`` and two files), applies the run's environment and
calls the entry point's ``sys.exit(main())`` (``diffcls_plugin._hook``'s shim for ``-m``). The
interpreter prints the child's SystemExit message or traceback and sets its exit status, as it does
for a fresh process.

Only environment variables the plugin reads at run time (:data:`RUN_TIME_ENV`) may differ from the
server's; a run with any other difference, one asked to be ``fresh``, or any run when the server
cannot be used (it failed to start, or its imports started a thread, which forking would not
copy), runs in a fresh ``python -m clip_benchmark.cli`` process as before. That ``-m`` really goes
through the hook is tested with a fresh process (tests/test_harness.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# read when a run starts, never at import: by the plugin (diffcls_plugin/config.py, store.py,
# data/digits.py) and by argparse when it formats a help text (COLUMNS)
RUN_TIME_ENV = frozenset({"DIFFCLS_CONFIG", "DIFFCLS_CACHE", "DIFFCLS_RESUME", "COLUMNS"})

SERVER = r"""
import json, os, sys, threading

import clip_benchmark.cli as cli  # patched by the plugin's hook on import, as the -m shim imports it
# what a diffusion run imports next (nothing runs: a run's behaviour does not depend on it)
import webdataset
import diffusers
from diffusers import AutoencoderKL, UNet2DConditionModel
import transformers
from transformers import CLIPTextModel, CLIPTokenizer
import diffcls_plugin.adapters, diffcls_plugin.classifier, diffcls_plugin.plan
import gc

gc.freeze()  # the imported objects: a child's collections (at its exit too) skip them, so they stay shared, uncopied

reply = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # anything printed here goes to the server's log, never into the replies
reply.write(json.dumps({"threads": threading.active_count()}) + "\n")
for line in sys.stdin:
    run = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        reply.close()
        os.chdir(run["cwd"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(run["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(run["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        for key in run["unset"]:
            os.environ.pop(key, None)
        os.environ.update(run["set"])
        sys.argv = [run["argv0"] or cli.__file__, *run["argv"]]
        sys.exit(cli.main())
    reply.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
"""

START_TIMEOUT = 300


class HarnessServer:
    """The server, started with ``env`` (default: this process's environment)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=self.env)
        self.buffer = b""
        self.usable: bool | None = None  # known once the server says it is ready

    def _message(self, timeout: float) -> dict | None:
        """The server's next reply line, or ``None`` when it sends none in ``timeout`` seconds or exits."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def ready(self) -> bool:
        if self.usable is None:
            hello = self._message(START_TIMEOUT)
            self.usable = hello is not None and hello.get("threads") == 1
            if not self.usable:
                self.close()
        return self.usable

    def run(self, argv: list[str], env: dict[str, str], timeout: float, cwd: str, script: str | None) -> subprocess.CompletedProcess | None:
        """``python -m clip_benchmark.cli ARGV`` (or the console ``script``) with ``env`` in ``cwd``,
        forked; ``None`` when this one cannot be forked."""
        changed = {key: value for key, value in env.items() if self.env.get(key) != value}
        removed = [key for key in self.env if key not in env]
        if not (set(changed) | set(removed)) <= RUN_TIME_ENV or not self.ready():
            return None
        with tempfile.TemporaryDirectory(prefix="harness-run-") as folder:
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            request = {"argv": argv, "argv0": script, "cwd": cwd, "set": changed, "unset": removed, "stdout": out, "stderr": err}
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                self.usable = False
                return None
            started = self._message(60)
            if started is None:
                self.usable = False
                return None
            done = self._message(timeout)
            if done is None:
                os.kill(started["pid"], signal.SIGKILL)
                self._message(60)
                raise subprocess.TimeoutExpired(argv, timeout)
            texts = [Path(path).read_text() if os.path.exists(path) else "" for path in (out, err)]
            return subprocess.CompletedProcess(command(argv, script), done["returncode"], *texts)

    def call(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600, fresh: bool = False, cwd=None, script: str | None = None
    ) -> subprocess.CompletedProcess:
        """``python -m clip_benchmark.cli ARGV``, or the ``clip_benchmark`` console ``script`` (its
        path: the same entry point, ``sys.exit(main())``, and ``sys.argv[0]``), with ``env`` (default:
        the server's) in ``cwd`` (its stdout and stderr as text): forked where it can be, else (or
        ``fresh``) a new process."""
        env = self.env if env is None else env
        forked = None if fresh else self.run(argv, env, timeout, str(cwd or os.getcwd()), script)
        return forked if forked is not None else spawn(argv, env, timeout, cwd, script)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


_server: HarnessServer | None = None


def start() -> None:
    """Start the server (its imports go on in the background) unless it is running."""
    global _server
    if _server is None:
        _server = HarnessServer()


def stop() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


def command(argv: list[str], script: str | None = None) -> list[str]:
    return [script, *argv] if script else [sys.executable, "-m", "clip_benchmark.cli", *argv]


def spawn(argv: list[str], env: dict[str, str], timeout: float, cwd=None, script: str | None = None) -> subprocess.CompletedProcess:
    """The run in a new process."""
    return subprocess.run(command(argv, script), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def run_harness(
    argv: list[str], env: dict[str, str], timeout: float = 600, fresh: bool = False, cwd=None, script: str | None = None
) -> subprocess.CompletedProcess:
    """:meth:`HarnessServer.call` on the tests' server (started with this process's environment)."""
    if fresh:
        return spawn(argv, env, timeout, cwd, script)
    start()
    return _server.call(argv, env, timeout, False, cwd, script)
