"""An HTTP/2 server (hyper-h2) reached by `Upgrade: h2c` or with prior
knowledge, for the capture fixtures and replay tests: `python3
h2c_upgrade_server.py PORT`. Answers every stream with a small JSON body
naming its path, the request's header fields as received, in order, and a
served id, which is also sent as a new `x-served-id` header: hyper-h2
indexes it, so a long connection fills the 4 KiB HPACK table and evicts (the
capture test checks header against body on every row). Prints "listening
PORT"."""
import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


SERVED = iter(range(1, 1 << 30))


def answer(conn, stream_id, path, fields=(), data=b"", trailers=()):
    served = f"{next(SERVED):05d}-" + "s" * 60
    doc = {"path": path, "stream": stream_id, "served_id": served,
           "fields": [[n, v] for n, v in fields]}
    # Only when the request had them: the fixtures' answers stay as made.
    if data:
        doc["body"] = data.decode("latin-1")
    if trailers:
        doc["trailers"] = [[n, v] for n, v in trailers]
    body = json.dumps(doc).encode()
    conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                  ("content-length", str(len(body))), ("x-served-id", served)])
    conn.send_data(stream_id, body, end_stream=True)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def read_start(sock):
    """The connection preface, or an HTTP/1.1 head asking to upgrade."""
    head = b""
    while True:
        if head.startswith(PREFACE):
            return head
        if b"\r\n\r\n" in head and not head.startswith(b"PRI "):
            return head
        chunk = sock.recv(65536)
        if not chunk:
            return None
        head += chunk


def serve(sock):
    head = read_start(sock)
    if head is None:
        return
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    if head.startswith(PREFACE):
        # Prior knowledge: the bytes read are the start of HTTP/2.
        conn.initiate_connection()
        pending = head
    else:
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        path = lines[0].split()[1]
        fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn.initiate_upgrade_connection(fields["http2-settings"])
        answer(conn, 1, path)
        pending = b""
    sock.sendall(conn.data_to_send())
    requests = {}
    while True:
        data = pending or sock.recv(65536)
        pending = b""
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ev.headers]
                requests[ev.stream_id] = (dict(fields).get(":path", "/"), fields, [b""], [])
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_id in requests:
                    requests[ev.stream_id][2][0] += ev.data
            if isinstance(ev, h2.events.TrailersReceived) and ev.stream_id in requests:
                requests[ev.stream_id][3].extend(
                    (n.decode("latin-1"), v.decode("latin-1")) for n, v in ev.headers)
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id in requests:
                path, fields, data, trailers = requests.pop(ev.stream_id)
                answer(conn, ev.stream_id, path, fields, data[0], trailers)
        sock.sendall(conn.data_to_send())


def main():
    port = int(sys.argv[1])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen()
    print(f"listening {port}", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    main()
