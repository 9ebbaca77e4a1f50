"""Print live genre updates from a `streamtag serve` server; reconnects whenever the server goes away.

Run a server (`streamtag serve --source demo=examples/audio/kevin-macleod-vibe-ace.ogg`), then:
    python examples/subscriber.py [ws://127.0.0.1:8765/] [STREAM|*]
Each update prints as: stream, audio time, top genre, its probability (protocol: docs/protocol.md).
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def main(uri: str = "ws://127.0.0.1:8765/", stream: str = "*") -> None:
    delay = 0.25
    while True:
        try:
            async with connect(uri, open_timeout=5) as ws:
                hello = json.loads(await ws.recv())
                print(f"# connected to {hello['server']}, model {hello['model']}", file=sys.stderr, flush=True)
                await ws.send(json.dumps({"type": "subscribe", "streams": stream if stream == "*" else [stream]}))
                delay = 0.25
                async for text in ws:
                    msg = json.loads(text)
                    if msg["type"] == "update":
                        label, p = msg["top"][0]
                        print(f"{msg['stream']}\t{msg['t']:.2f}\t{label}\t{p:.3f}", flush=True)
                    elif msg["type"] == "error":
                        print(f"# error: {msg['message']}", file=sys.stderr, flush=True)
        except InvalidStatus as e:  # e.g. 401: a missing or wrong ?token=
            sys.exit(f"# refused: {e}")
        except (OSError, ConnectionClosed, TimeoutError) as e:
            print(f"# disconnected ({e!r}); retrying in {delay:.2f} s", file=sys.stderr, flush=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
