"""The least a Trio proxy can do per request: the floor bench/instructions.py measures.

One task per client connection, one upstream connection per client, and per request: wait
until the client's bytes are readable, ``recv`` them, ``send`` them upstream, wait for the
upstream, ``recv`` the answer, ``send`` it back. No parsing, no routing, no headers, no
timeouts: it only works for the benchmark's small GET requests and one-``recv`` answers.
It shows what Trio's scheduler and two socket waits cost per request, which no proxy on
Trio can go below. Like the gateway's processes, it runs Trio's batches of ready tasks in
arrival order (``gateway.proxy.fair_scheduling``), so both have the same scheduler.

    python bench/trio_floor.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import socket
import sys

import trio


async def main(port: int, upstream: int) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        client: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        up = socket.create_connection(("127.0.0.1", upstream))
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.setblocking(False)
        try:
            while True:
                await trio.lowlevel.wait_readable(client)
                data = client.recv(65536)
                if not data:
                    return
                up.send(data)
                await trio.lowlevel.wait_readable(up)
                client.send(up.recv(65536))
        except OSError:
            pass
        finally:
            up.close()

    await trio.serve_tcp(handle, port, host="127.0.0.1")


if __name__ == "__main__":
    from gateway.proxy import fair_scheduling

    fair_scheduling()
    try:
        trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
    except KeyboardInterrupt:
        pass
