"""A gRPC client (grpcio) for the HTTP/2 tests: `python3 grpc_client.py PORT N`
makes N Predict calls and N/4 Generate calls on one channel (one HTTP/2
connection), each with a unique x-request-id so the HPACK dynamic table
fills and evicts. Every fifth Predict asks top_k 7. Prints "done CALLS"."""
import sys

import grpc

sys.path.insert(0, __import__("os").path.dirname(__file__))
from grpc_server import pb, pb_grpc  # noqa: E402


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    calls = 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ModelStub(ch)
        for i in range(n):
            req = pb.PredictRequest(model="resnet", inputs=[0.5 + i % 3, 1.5, 2.0 + i], top_k=7 if i % 5 == 4 else 3)
            try:
                stub.Predict(req, metadata=[("x-request-id", f"req-{i:06d}-{'x' * 40}")], timeout=10)
            except grpc.RpcError:
                pass
            calls += 1
            if i % 4 == 0:
                prompt = f"tell me about item {i}" + (" shadow-diff" if i % 8 == 0 else "")
                try:
                    list(stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=5),
                                       metadata=[("x-request-id", f"gen-{i:06d}")], timeout=10))
                except grpc.RpcError:
                    pass
                calls += 1
    print(f"done {calls}", flush=True)


if __name__ == "__main__":
    main()
