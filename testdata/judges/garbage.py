#!/usr/bin/env python3
"""Test judge that answers badly, one kind per marker in the primary text:

  WRONGID  a valid answer with the id of the next request
  RANGE    score 1.5
  NAN      score NaN (Python writes it, JSON has no such value)
  NOSCORE  only the id
  REFUSE   {"id": ..., "error": "cannot grade this"}
  LONG     a 2 MiB line
  GOOD     a valid answer, score 0.5
  anything else: a line that is not JSON
"""
import sys

sys.dont_write_bytecode = True  # keep testdata/ free of __pycache__
from overlap import serve


def handle(request):
    text = str(request.get("primary"))
    if "WRONGID" in text:
        return {"id": request["id"] + 1, "score": 0.5}
    if "RANGE" in text:
        return {"score": 1.5}
    if "NAN" in text:
        return {"score": float("nan")}
    if "NOSCORE" in text:
        return {}
    if "REFUSE" in text:
        return {"error": "cannot grade this"}
    if "LONG" in text:
        return "x" * (2 << 20)
    if "GOOD" in text:
        return {"score": 0.5}
    return "this is not json"


if __name__ == "__main__":
    serve(handle)
