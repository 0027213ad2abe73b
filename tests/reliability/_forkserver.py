"""Test helper: start ``tlassoc`` command processes quickly, for the fault-injection suite.

Importing torch and TransformerLens takes several seconds per process; a suite that kills and
resumes dozens of ``tlassoc train`` processes would spend its time importing. This server
imports tlassoc once, then forks one child per request; each child is a separate operating-system
process that runs ``tlassoc.cli.main(argv)`` (what ``python -m tlassoc`` runs) with its own
environment, stdout and stderr files, and the default Ctrl-C handling, and exits with
``main``'s status. The test kills children with real signals; the server reaps them and reports
their exit codes.

Protocol: one JSON object per line on stdin, one reply per line on stdout.
``{"op": "run", "argv": [...], "env": {...}, "stdout": PATH, "stderr": PATH}`` -> ``{"pid": N}``;
``{"op": "wait", "pid": N}`` -> ``{"rc": CODE}`` (negative: killed by that signal).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import torch

torch.set_num_threads(1)
import torch._dynamo  # noqa: E402,F401 - creating an optimizer imports it; import it once here

import tlassoc.cli  # noqa: E402
import tlassoc.data  # noqa: E402,F401
import tlassoc.memory.probes  # noqa: E402,F401
import tlassoc.training  # noqa: E402,F401


def _child(cmd: dict) -> None:
    code = 1
    try:
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = os.open(cmd[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.environ.update(cmd.get("env", {}))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = tlassoc.cli.main(list(cmd["argv"]))
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on the child's stderr
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    reply = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            reply.flush()
            pid = os.fork()
            if pid == 0:
                _child(cmd)
            answer = {"pid": pid}
        elif cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            answer = {"rc": os.waitstatus_to_exitcode(status)}
        else:
            answer = {"error": f"unknown op {cmd['op']!r}"}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    serve()
