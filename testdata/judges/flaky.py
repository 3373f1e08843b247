#!/usr/bin/env python3
"""Test judge: like overlap.py, but refuses ({"error": "rate limited"}) a
request whose text contains "LIMIT", as a judge API over its quota does."""
import json
import sys

sys.dont_write_bytecode = True  # keep testdata/ free of __pycache__
from overlap import overlap, serve


def handle(request):
    if "LIMIT" in json.dumps(request):
        return {"error": "rate limited"}
    return overlap(request)


if __name__ == "__main__":
    serve(handle)
