"""The in-run floor: a bare aiohttp + uvloop pass-through that only copies request and
response (no header hygiene, no metering, no safety work)."""

import sys

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = sys.argv[2]
HOP = {"host", "content-length", "transfer-encoding", "connection"}


async def handle(request: web.Request) -> web.StreamResponse:
    session = request.app["session"]
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with session.request(request.method, UPSTREAM + "/" + request.match_info["rest"],
                               headers=headers, data=body) as up:
        out = web.StreamResponse(status=up.status, headers={
            k: v for k, v in up.headers.items() if k.lower() not in HOP})
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def ctx(app: web.Application):
    app["session"] = aiohttp.ClientSession(auto_decompress=False,
                                           connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["session"].close()


app = web.Application()
app.cleanup_ctx.append(ctx)
app.router.add_route("*", "/{up}/{rest:.*}", handle)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
