"""Drive fixture_server.py: keep-alive, JSON POSTs, a chunked upload, HEAD,
a 256 KiB response, secrets in headers. Used to record testdata/demo.pcap."""
import http.client
import json
import sys

port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
auth = {"Authorization": "Bearer secret-token-123", "Cookie": "session=abc123"}
for i in range(20):
    c.request("POST", "/predict", json.dumps({"text": "x" * (i * 3)}),
              {"Content-Type": "application/json", **auth})
    c.getresponse().read()
    c.request("GET", f"/items/{1000 + i}?fields=name,price", headers=auth)
    c.getresponse().read()
c.request("HEAD", "/items/7")
c.getresponse().read()
c.request("GET", "/missing")
c.getresponse().read()
c.close()

c = http.client.HTTPConnection("127.0.0.1", port)
c.putrequest("POST", "/upload")
c.putheader("Transfer-Encoding", "chunked")
c.endheaders()
for part in (b"hello ", b"chunked ", b"world"):
    c.send(b"%x\r\n%s\r\n" % (len(part), part))
c.send(b"0\r\n\r\n")
c.getresponse().read()
c.request("POST", "/upload", b"y" * 100_000)
c.getresponse().read()
c.request("GET", "/big")
c.getresponse().read()
c.close()
