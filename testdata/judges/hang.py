#!/usr/bin/env python3
"""Test judge: like overlap.py, but a request whose text contains "HANG"
never gets an answer (the judge sleeps an hour), for the timeout test.

JUDGE_PIDFILE: when set, the hanging process writes its pid there first, so
a test can check that it was killed.
"""
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # keep testdata/ free of __pycache__
from overlap import overlap, serve


def handle(request):
    if "HANG" in json.dumps(request):
        pidfile = os.environ.get("JUDGE_PIDFILE")
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(3600)
    return overlap(request)


if __name__ == "__main__":
    serve(handle)
