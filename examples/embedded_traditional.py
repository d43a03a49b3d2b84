"""A traditional node (store + Admin API + proxy in one) embedded in a Trio program.

Run it: ``python examples/embedded_traditional.py``. Shows the embedding API: the node runs
in the caller's nursery, reports what it bound, and stops when the nursery is cancelled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from _demo import http, settings, wait_until

from gateway import serve_node
from gateway._echo import serve_echo


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_echo)
            node = await nursery.start(
                serve_node,
                settings(Path(tmp), "node", admin_listen="127.0.0.1:0", proxy_listen="127.0.0.1:0"),
            )
            admin, proxy = node.url("admin"), node.url("proxy")
            url = f"http://{upstream[0]}:{upstream[1]}"
            await http("POST", f"{admin}/services", {"name": "echo", "url": url})
            await http("POST", f"{admin}/services/echo/routes", {"paths": ["/echo"]})

            async def served() -> bool:
                return (await http("GET", f"{proxy}/echo/x"))[0] == 200

            await wait_until("the proxy to serve /echo", served)
            status, body = await http("GET", f"{proxy}/echo/x")
            print(f"GET {proxy}/echo/x -> {status}, upstream saw path {body['path']!r}")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
