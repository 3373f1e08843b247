"""An HTTP/2 server reached by `Upgrade: h2c` (hyper-h2), for the capture
fixtures: `python3 h2c_upgrade_server.py PORT`. Answers every stream with a
small JSON body naming its path and a served id, which is also sent as a new
`x-served-id` header: hyper-h2 indexes it, so a long connection fills the
4 KiB HPACK table and evicts (the test checks header against body on every
row). Prints "listening PORT"."""
import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


SERVED = iter(range(1, 1 << 30))


def answer(conn, stream_id, path):
    served = f"{next(SERVED):05d}-" + "s" * 60
    body = json.dumps({"path": path, "stream": stream_id, "served_id": served}).encode()
    conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                  ("content-length", str(len(body))), ("x-served-id", served)])
    conn.send_data(stream_id, body, end_stream=True)


def serve(sock):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            return
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    path = lines[0].split()[1]
    fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(fields["http2-settings"])
    answer(conn, 1, path)
    sock.sendall(conn.data_to_send())
    paths = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                paths[ev.stream_id] = dict(ev.headers).get(b":path", b"/").decode()
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id in paths:
                answer(conn, ev.stream_id, paths.pop(ev.stream_id))
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
