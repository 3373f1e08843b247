"""An HTTP/2 server (hyper-h2, prior knowledge only) that ends each
connection gracefully after a few requests, as nginx does after
`keepalive_requests`, Envoy after `max_requests_per_connection` and grpc-go
at its maximum connection age: the last request is answered in full, then
GOAWAY NO_ERROR names it as the last stream processed, and the connection
is closed. `python3 graceful_goaway_server.py PORT LOG PER_CONNECTION`.
Each answered request appends "connection-number k" to LOG. Prints
"listening PORT"."""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events

LOCK = threading.Lock()
CONNECTIONS = [0]


def serve(sock, log_path, per_connection):
    with LOCK:
        CONNECTIONS[0] += 1
        number = CONNECTIONS[0]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    answered = 0
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if not isinstance(ev, h2.events.StreamEnded):
                continue
            body = b'{"ok":true}'
            conn.send_headers(ev.stream_id, [(":status", "200"),
                                             ("content-type", "application/json"),
                                             ("content-length", str(len(body)))])
            conn.send_data(ev.stream_id, body, end_stream=True)
            answered += 1
            with LOCK, open(log_path, "a") as f:
                f.write(f"{number} {answered}\n")
            if answered == per_connection:
                conn.close_connection(h2.errors.ErrorCodes.NO_ERROR,
                                      last_stream_id=ev.stream_id)
                sock.sendall(conn.data_to_send())
                sock.close()
                return
        sock.sendall(conn.data_to_send())


def main():
    port, log_path, per_connection = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen()
    print(f"listening {port}", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve, args=(s, log_path, per_connection),
                         daemon=True).start()


if __name__ == "__main__":
    main()
