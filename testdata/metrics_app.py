"""A small model-serving-like HTTP service with Prometheus metrics, for shadowctl's tests.

Used by the Rust integration tests to check that `shadowctl replay` measures each
target's CPU and memory (from the process collector of prometheus_client) and that
`shadowctl diff` judges them. Only the standard library and prometheus_client.

    python metrics_app.py --port 0 --variant {primary,shadow} [--cpu-ms-per-request F]
                          [--leak-mb-per-s F] [--metrics-mode {ok,hang,garbage}]
                          [--cadvisor POD]

Prints exactly one line `listening PORT` on stdout once the socket is bound.

- POST /predict burns --cpu-ms-per-request ms of this thread's CPU time
  (default 5.0 for primary, 10.0 for shadow) and answers {"label": "cat", "score": 0.5}.
- GET /metrics serves the default registry (text or OpenMetrics by Accept, gzip by
  Accept-Encoding). The counter model_predictions_total exists only in the primary.
- --leak-mb-per-s R > 0 makes resident memory grow by R MB (10^6 bytes) per second.
- --metrics-mode hang sleeps 60 s before answering /metrics; garbage answers a body
  that is not the exposition format.
- --cadvisor POD serves what a cAdvisor endpoint shows of a node running this process
  as container `server` of pod POD: container_cpu_usage_seconds_total and
  container_memory_working_set_bytes for that container (this process's CPU time and
  resident memory), for the pod's own cgroup (container="", the container and its pause
  container together), for the pause container (container="POD", as much CPU as the
  server and 100 MB), for a busy neighbour pod (8 CPU seconds a second) and for the root
  cgroup (id="/", all of it), with cAdvisor's labels; and, as standalone cAdvisor does,
  process_* families of the exporter's own process (0.1 CPU seconds a second, 50 MB),
  instead of this process's.
"""
import argparse
import gzip
import json
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

LEAK_INTERVAL_S = 0.05
_leaked = []  # kept alive for the life of the process


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--variant", choices=("primary", "shadow"), required=True)
    p.add_argument("--cpu-ms-per-request", type=float, default=None)
    p.add_argument("--leak-mb-per-s", type=float, default=0.0)
    p.add_argument("--metrics-mode", choices=("ok", "hang", "garbage"), default="ok")
    p.add_argument("--cadvisor", metavar="POD", default=None)
    args = p.parse_args(argv)
    if args.cpu_ms_per_request is None:
        args.cpu_ms_per_request = 5.0 if args.variant == "primary" else 10.0
    if args.cpu_ms_per_request < 0 or args.leak_mb_per_s < 0:
        p.error("--cpu-ms-per-request and --leak-mb-per-s must be >= 0")
    return args


def burn_cpu(ms):
    """Use `ms` milliseconds of this thread's CPU time."""
    end = time.thread_time() + ms / 1000.0
    x = 1
    while time.thread_time() < end:
        for _ in range(200):
            x = (x * 1103515245 + 12345) % 2147483648
    return x


def leak_forever(mb_per_s, leaked_gauge):
    # Whole pages less a little room for the allocator's and the object's
    # headers, so the resident memory grows by exactly that many pages per
    # chunk whether the allocator maps each chunk or takes it from its heap.
    pages = max(1, round(mb_per_s * 1_000_000 * LEAK_INTERVAL_S / 4096))
    chunk = pages * 4096 - 64
    if mb_per_s <= 0:
        return
    next_tick = time.monotonic()
    while True:
        # Multiplying a one-byte bytearray writes every byte, so the pages are resident.
        _leaked.append(bytearray(b"\x01") * chunk)
        # The truth the tests compare diff's growth estimate with.
        leaked_gauge.inc(chunk)
        next_tick += LEAK_INTERVAL_S
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()


class CadvisorLike:
    """A node's cgroups as kubelet's cAdvisor endpoint exposes them (see --cadvisor)."""

    LABELS = ["id", "container", "image", "pod", "namespace", "name"]

    def __init__(self, pod):
        self.pod = pod
        self.start = time.monotonic()

    def _series(self, own, pause, neighbour):
        pod = self.pod
        return [
            (["/kubepods/pod-" + pod + "/c-server", "server", "model:v1", pod, "ml", "c-server"], own),
            (["/kubepods/pod-" + pod, "", "", pod, "ml", ""], own + pause),
            (["/kubepods/pod-" + pod + "/c-pause", "POD", "registry.k8s.io/pause:3.9", pod, "ml", "c-pause"], pause),
            (["/kubepods/pod-other/c-batch", "batch", "batch:v3", "other-0", "ml", "c-batch"], neighbour),
            (["/", "", "", "", "", ""], own + pause + neighbour),
        ]

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds_total", "Cumulative cpu time consumed", labels=self.LABELS
        )
        elapsed = time.monotonic() - self.start
        own = time.process_time()
        for labels, value in self._series(own, own, 8.0 * elapsed):
            cpu.add_metric(labels, value)
        yield cpu
        exporter_cpu = CounterMetricFamily("process_cpu_seconds_total", "The exporter's own CPU")
        exporter_cpu.add_metric([], 0.1 * elapsed)
        yield exporter_cpu
        exporter_mem = GaugeMetricFamily("process_resident_memory_bytes", "The exporter's own memory")
        exporter_mem.add_metric([], 50e6)
        yield exporter_mem
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * 4096
        mem = GaugeMetricFamily(
            "container_memory_working_set_bytes", "Current working set", labels=self.LABELS
        )
        for labels, value in self._series(rss, 100e6, 6 << 30):
            mem.add_metric(labels, value)
        yield mem


def garbage_body():
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(256))
    return (
        b"{{{ not a metric\n"
        + noise
        + b"\n# TYPE\n}}} = ;;; 12 34 56 \"\n\x00\xff\xfe garbage\n"
        + b"model_request_seconds{le=\n"
    )


def make_handler(args, metrics):
    predictions, request_seconds = metrics
    garbage = garbage_body()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "metrics_app/1.0"

        def log_message(self, format, *a):  # no per-request logging
            pass

        def _read_body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _send(self, status, body, content_type, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self):
            self._read_body()
            self._send(404, b'{"error": "not found"}', "application/json")

        def _path(self):
            return self.path.split("?", 1)[0]

        def do_POST(self):
            if self._path() != "/predict":
                return self._not_found()
            start = time.perf_counter()
            self._read_body()
            burn_cpu(args.cpu_ms_per_request)
            label = "cat"
            body = json.dumps({"label": label, "score": 0.5}).encode()
            if predictions is not None:
                predictions.labels(label=label).inc()
            request_seconds.observe(time.perf_counter() - start)
            self._send(200, body, "application/json")

        def do_GET(self):
            if self._path() != "/metrics":
                return self._not_found()
            self._read_body()
            if args.metrics_mode == "hang":
                time.sleep(60)
            if args.metrics_mode == "garbage":
                return self._send(200, garbage, "text/plain")
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            body = encoder(REGISTRY)
            extra = []
            if "gzip" in (self.headers.get("Accept-Encoding") or "").lower():
                body = gzip.compress(body)
                extra.append(("Content-Encoding", "gzip"))
            self._send(200, body, content_type, extra)

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_found

    return Handler


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    predictions = None
    if args.variant == "primary":  # the shadow "forgot" this counter
        predictions = Counter("model_predictions", "Predictions served, by label", ["label"])
    request_seconds = Histogram("model_request_seconds", "Time spent serving /predict")
    info = Gauge("model_info", "Model version being served", ["version"])
    info.labels(version=args.variant).set(1)
    leaked = Gauge("model_leaked_bytes", "Bytes deliberately leaked so far (test truth)")
    if args.cadvisor:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            REGISTRY.unregister(c)
        REGISTRY.register(CadvisorLike(args.cadvisor))

    def on_term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args, (predictions, request_seconds)))
    if args.leak_mb_per_s > 0:
        threading.Thread(target=leak_forever, args=(args.leak_mb_per_s, leaked), daemon=True).start()
    sys.stdout.write(f"listening {server.server_address[1]}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
