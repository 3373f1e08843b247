"""A small JSON API on 127.0.0.1 used to record testdata/demo.pcap."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/items/"):
            item = self.path.split("/")[2]
            self._send(200, {"id": item, "name": f"item {item}", "price": 9.5})
        elif self.path == "/big":
            body = b"x" * (256 << 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._send(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self):
        data = self._body()
        if self.path == "/predict":
            text = json.loads(data or b"{}").get("text", "")
            self._send(200, {"label": "long" if len(text) > 20 else "short", "score": 0.75},
                       [("Set-Cookie", "session=abc123; HttpOnly")])
        elif self.path == "/upload":
            self._send(201, {"received": len(data)})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Api)
# Tests wait for this line: the port is bound by this process.
print("listening", flush=True)
server.serve_forever()
