"""Traffic with secrets in bodies, for `secrets.pcap` (see make-fixtures.sh).

Runs an HTTP/1.1 server (Python's http.server) and a client (http.client)
in one process, on 127.0.0.1 at the port given, over one keep-alive
connection: an OAuth password grant (form body with a password and a client
secret, answered with access and refresh tokens in JSON), a JSON login
(password, answered with a camelCase idToken), and an LLM-style completion
whose `token` fields are data, not secrets. Every value here is made up.
"""
import http.client
import http.server
import json
import sys
import threading

ANSWERS = {
    "/oauth/token": {
        "access_token": "eyJhbGciOiJIUzI1NiJ9.made-up.sig",
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "rt-made-up-123",
        "scope": "read",
    },
    "/login": {"ok": True, "session": {"idToken": "id-made-up-456", "user": "ann"}},
    "/v1/completions": {
        "choices": [{"text": "Hello", "logprobs": {"token": "Hello", "logprob": -0.25}}]
    },
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(ANSWERS[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1])
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    form = "application/x-www-form-urlencoded"
    requests = [
        ("/oauth/token", form,
         "grant_type=password&username=ann&password=hunter2&client_id=app&client_secret=s3cr3t-made-up&scope=read"),
        ("/login", "application/json",
         json.dumps({"user": "ann", "password": "hunter2", "remember": True})),
        ("/v1/completions", "application/json",
         json.dumps({"prompt": "Say hello", "max_tokens": 1, "logprobs": 1})),
    ]
    for path, ctype, body in requests:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        conn.getresponse().read()
    conn.close()
    server.shutdown()


if __name__ == "__main__":
    main()
