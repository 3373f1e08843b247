"""An HTTP/2 server (hyper-h2, prior knowledge only) that ends some streams
the ways real servers do, for the replay error tests: `python3
reset_server.py PORT LOG`. Requests are numbered in the order they arrive
(over all connections); request k gets
  - k % 10 == 3: RST_STREAM REFUSED_STREAM (not processed, safe to retry),
  - k % 10 == 6: RST_STREAM INTERNAL_ERROR,
  - k % 10 == 9: GOAWAY NO_ERROR with a last stream id below it, and the
    connection is closed (the stream was never processed),
  - otherwise: 200 with a small JSON body.
Every outcome is appended to LOG as "k outcome" lines, so a test can
count what the client should have recorded. Prints "listening PORT"."""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events

LOCK = threading.Lock()
COUNT = [0]


def log(path, k, outcome):
    with LOCK, open(path, "a") as f:
        f.write(f"{k} {outcome}\n")


def serve(sock, log_path):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if not isinstance(ev, h2.events.StreamEnded):
                continue
            with LOCK:
                COUNT[0] += 1
                k = COUNT[0]
            if k % 10 == 3:
                conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                log(log_path, k, "refused_stream")
            elif k % 10 == 6:
                conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                log(log_path, k, "stream_reset")
            elif k % 10 == 9:
                conn.close_connection(h2.errors.ErrorCodes.NO_ERROR,
                                      last_stream_id=max(0, ev.stream_id - 2))
                log(log_path, k, "goaway")
                sock.sendall(conn.data_to_send())
                sock.close()
                return
            else:
                body = b'{"ok":true}'
                conn.send_headers(ev.stream_id, [(":status", "200"),
                                                 ("content-type", "application/json"),
                                                 ("content-length", str(len(body)))])
                conn.send_data(ev.stream_id, body, end_stream=True)
                log(log_path, k, "ok")
        sock.sendall(conn.data_to_send())


def main():
    port, log_path = int(sys.argv[1]), sys.argv[2]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen()
    print(f"listening {port}", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve, args=(s, log_path), daemon=True).start()


if __name__ == "__main__":
    main()
