"""The yardstick for intake: a bare aiohttp handler on the webhook's path that reads
the body and answers 202, doing nothing else.

    python -m bench.bare_server --port 8099
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"outcome": "accepted"}, status=202)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/hooks/hr/{source}", accept)
    app.router.add_get("/readyz", lambda _: web.json_response({"status": "ready"}))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
