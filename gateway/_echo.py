"""A tiny echo upstream for the quickstart and the examples: answers every request with a
JSON document describing it (method, path, query, headers, body size)."""

from __future__ import annotations

import json
from functools import partial

import h11
import trio

from gateway._net import bound_address


async def _handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request: h11.Request | None = None
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage) or not isinstance(
                    event, h11.Request | h11.Data
                ):
                    break
            if request is None:
                return
            target = request.target.decode("latin-1")
            path, _, query = target.partition("?")
            body = json.dumps(
                {
                    "method": request.method.decode(),
                    "path": path,
                    "query": query,
                    "headers": {k.decode(): v.decode("latin-1") for k, v in request.headers},
                    "body_size": size,
                },
                indent=2,
            ).encode()
            await stream.send_all(
                conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    )
                )
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def serve_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(bound_address(listeners[0]))
    await trio.serve_listeners(partial(_handle), listeners)
