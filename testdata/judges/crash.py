#!/usr/bin/env python3
"""Test judge: like overlap.py, but exits with status 3, without answering,
on a request whose text contains "CRASH"."""
import json
import sys

sys.dont_write_bytecode = True  # keep testdata/ free of __pycache__
from overlap import overlap, serve


def handle(request):
    if "CRASH" in json.dumps(request):
        print("crash.py: crashing as asked", file=sys.stderr, flush=True)
        sys.exit(3)
    return overlap(request)


if __name__ == "__main__":
    serve(handle)
