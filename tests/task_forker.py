"""``python -m MODULE ARGS`` as a fork of one process that has imported the training stack.

Each KFP task of tests/kfp_backend.py is a process of its own, as in a pod; started fresh,
each spends 10-20 s importing TensorFlow, TFX, Beam, TFDV, TFT and TFMA before it does
anything (33 tasks in tests/test_kubeflow_run.py). ``Forker`` starts one server process that
imports them once (``PRELOAD``: libraries only, none of the project's modules, and no
TensorFlow op is run, so no runtime thread pool exists at a fork), then forks it per task.
The child is the task's process: its own pid, working directory, environment, argv and
stdout/stderr (files), running the module as ``python -m`` does (``runpy``, ``sys.path[0]``
the working directory), exiting with its code.

Protocol: a JSON line per task on the server's stdin (``id``, ``module``, ``args``, ``cwd``,
``env``, ``stdout``, ``stderr``), a JSON line ``{"id", "code"}`` on its stdout when it ended.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future

PRELOAD = ("tensorflow", "apache_beam", "tensorflow_data_validation", "tensorflow_transform",
           "tensorflow_model_analysis", "keras",
           "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor", "tfx.v1")


class Forker:
    """The client: ``run`` is thread-safe; ``close`` ends the server (and nothing else)."""

    def __init__(self, env: dict | None = None):
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, text=True, bufsize=1)
        self.lock, self.waiting, self.next_id = threading.Lock(), {}, 0
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the task forker did not start: {ready!r}")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            answer = json.loads(line)
            with self.lock:
                future = self.waiting.pop(answer["id"])
            future.set_result(answer["code"])
        with self.lock:  # the server died: nothing still waiting will be answered
            for future in self.waiting.values():
                future.set_exception(RuntimeError("the task forker exited"))
            self.waiting.clear()

    def run(self, module: str, args: list[str], cwd: str, env: dict, stdout: str, stderr: str,
            timeout: float) -> int:
        """Runs ``python -m module args`` as a fork; its exit code (-N: killed by signal N)."""
        future: Future = Future()
        with self.lock:
            self.next_id += 1
            request = {"id": self.next_id, "module": module, "args": args, "cwd": str(cwd),
                       "env": env, "stdout": stdout, "stderr": stderr}
            self.waiting[self.next_id] = future
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        return future.result(timeout)

    def close(self) -> None:
        """Ends the server: it holds nothing to save, so it is killed rather than left to
        unload the libraries."""
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.kill()
            self.process.wait()


def _child(request: dict, answers) -> None:
    """In the fork: becomes ``python -m module args`` and exits with its code."""
    import atexit
    import runpy
    import traceback
    code = 1
    try:
        answers.close()  # the server's: neither its answers nor its requests are the task's
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = request["cwd"]  # python -m: the working directory first
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as done:
            if done.code is None or isinstance(done.code, int):
                code = done.code or 0
            else:
                print(done.code, file=sys.stderr)
        except BaseException:  # noqa: B036 - what the interpreter would print
            traceback.print_exc()
        atexit._run_exitfuncs()  # pylint: disable=protected-access
    except BaseException:  # noqa: B036
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _serve() -> None:
    """The server: imports ``PRELOAD``, then forks a child per request line."""
    import selectors
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the libraries print goes to stderr, not into the protocol
    for name in PRELOAD:
        __import__(name)
    answers.write("ready\n")
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    children, pending, open_ = {}, b"", True
    while open_ or children:
        if open_ and selector.select(timeout=0.05):
            data = os.read(0, 1 << 20)
            open_, pending = bool(data), pending + data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    _child(request, answers)
                children[pid] = request["id"]
        elif not open_:
            import time
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            answers.write(json.dumps({"id": children.pop(pid),
                                      "code": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    _serve()
