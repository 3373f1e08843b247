#!/usr/bin/env python3
"""Test judge for shadowctl: scores a pair by word overlap.

The score is the Jaccard index of the two answers' lowercased words
(re \\w+); a value that is not a string is compared as its JSON text. Two
answers without words score 1.

Also the helper the other test judges import (`serve`, `overlap`): the
script's directory is on sys.path when Python runs it.

Environment, for tests that watch the processes:
  JUDGE_PIDDIR   write an empty file named after this process's pid there
  JUDGE_LOG      append "pid start end" (seconds) per request
  JUDGE_DELAY_S  sleep this long before each answer
"""
import json
import os
import re
import sys
import time


def words(value):
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return set(re.findall(r"\w+", text.lower()))


def jaccard(a, b):
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def overlap(request):
    delay = float(os.environ.get("JUDGE_DELAY_S", "0"))
    if delay > 0:
        time.sleep(delay)
    score = jaccard(request["primary"], request["shadow"])
    return {"score": score, "reason": "word overlap"}


def serve(handle):
    """Answer each request line with handle(request): a dict (the request's
    id is added unless it has one) or a str written as the line itself."""
    piddir = os.environ.get("JUDGE_PIDDIR")
    if piddir:
        open(os.path.join(piddir, str(os.getpid())), "w").close()
    log = os.environ.get("JUDGE_LOG")
    for line in sys.stdin:
        request = json.loads(line)
        started = time.time()
        answer = handle(request)
        if isinstance(answer, dict):
            answer = json.dumps({"id": request["id"], **answer})
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {started} {time.time()}\n")
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(overlap)
