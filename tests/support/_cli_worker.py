"""A long-lived `clip` runner for tests/support/_cli_battery.py: one process that has imported torch and clip
once, and runs command lines one after another, each as ``python -m clip ARGS`` would run it.

Requests come as JSON lines on stdin: ``{"args": [...], "cwd": ..., "env": {...}, "umask": int}``.
For each, the environment, working folder and umask are set, file descriptors 1 and 2 are pointed
at files (so that everything the command prints, from Python or from native code, is captured), and
``clip.__main__.main(args)`` runs; an exception that escapes it is printed as Python would print it
(a traceback) with exit status 1. The answer goes back as one JSON line on the original stdout:
``{"code": int, "out": str, "err": str}`` (undecodable bytes replaced).
"""

import json
import os
import sys
import tempfile
import traceback

from clip.__main__ import main


def _run(request: dict) -> dict:
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = main(request["args"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # as the interpreter would report it
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", errors="replace"))
    return {"code": code, "out": texts[0], "err": texts[1]}


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    for line in sys.stdin:
        answers.write(json.dumps(_run(json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
