"""A gRPC model server (grpcio) for the HTTP/2 tests: `python3 grpc_server.py
PORT VARIANT`, VARIANT `primary`, `shadow`, `primary-long` or `shadow-gzip`.
The last two give long (compressible) labels, and `shadow-gzip` answers
with gzip-compressed messages: grpcio sends a message uncompressed when
gzip would not make it smaller, as with the short labels. Prints "listening
PORT" once bound. The shadow differs in known ways:
  - Predict: model_version "v2" (not "v1"); scores 0.2% higher;
  - Predict with top_k == 7: UNAVAILABLE (the primary answers);
  - Generate: prompts containing "shadow-diff" get a different second token.
"""
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def load_stubs():
    out = tempfile.mkdtemp(prefix="grpc-stubs-")
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(HERE, "model.proto")])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    import model_pb2, model_pb2_grpc  # noqa: E401
    return model_pb2, model_pb2_grpc


pb, pb_grpc = load_stubs()


class Model(pb_grpc.ModelServicer):
    def __init__(self, shadow, long_labels):
        self.shadow = shadow
        self.suffix = " (a long, repetitive label text)" * 8 if long_labels else ""

    def Predict(self, req, ctx):
        if self.shadow and req.top_k == 7:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "replica warming up")
        total = sum(req.inputs) or 1.0
        scale = 1.002 if self.shadow else 1.0
        preds = [pb.Prediction(label=f"class-{i}{self.suffix}", score=min(1.0, abs(x) / abs(total) * scale))
                 for i, x in enumerate(req.inputs[: max(1, req.top_k)])]
        return pb.PredictResponse(
            predictions=preds,
            model_version="v2" if self.shadow else "v1",
            embedding=[x / 10.0 for x in req.inputs],
        )

    def Generate(self, req, ctx):
        words = req.prompt.split() or ["empty"]
        for i in range(max(1, min(req.max_tokens, 8))):
            text = words[i % len(words)]
            if self.shadow and i == 1 and "shadow-diff" in req.prompt:
                text = "different"
            yield pb.Token(text=text, index=i)


def main():
    port, variant = int(sys.argv[1]), sys.argv[2]
    # Messages are compressed only for clients that accept gzip
    # (grpc-accept-encoding), as grpcio's clients do.
    compression = grpc.Compression.Gzip if variant.endswith("-gzip") else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), compression=compression)
    model = Model(variant.startswith("shadow"), variant.endswith(("-long", "-gzip")))
    pb_grpc.add_ModelServicer_to_server(model, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        print("bind failed", flush=True)
        return
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
