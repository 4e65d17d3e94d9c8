"""Runs documented command lines, each in a process of its own, without paying the imports
each time: this process imports torch, Lightning and lightning_fv once (about 8 s on 2
cores) and forks one child per command, which runs the command's entry point as its
process would (``lightning_fv.cli.main``, ``runpy`` for ``python script.py`` and
``python -m module``) with its own working directory, environment and output file.

No torch computation runs here before a fork (a forked torch whose thread pool has started
can hang). Requests arrive on stdin, one JSON object per line
(``{"argv", "cwd", "env", "log", "timeout"}``); each answer is one line ``{"rc": int}``.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import traceback

import lightning  # noqa: F401  (imported once for every child)
import torch  # noqa: F401

import lightning_fv.cli  # noqa: F401


def _child(req: dict) -> int:
    os.chdir(req["cwd"])
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(req["env"])
    signal.alarm(int(req["timeout"]))
    argv: list[str] = req["argv"]
    if argv[0] == "lightning-fv":
        sys.argv = list(argv)
        lightning_fv.cli.main(argv[1:])
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


def _run(req: dict) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(req)
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported through the exit status and log
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps({"rc": _run(json.loads(line))}), flush=True)
