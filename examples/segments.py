"""Print a stream's segments as they close ("0:00-0:42 folk (folk, 0.93)"), with the Python API (docs/api.md).

    python examples/segments.py https://radio.example/live.mp3      # a radio station, until Ctrl-C
    python examples/segments.py examples/audio/brahms-hungarian-dance-5.ogg 8   # a file, at 8x real time
"""
import sys

import streamtag
from streamtag.plot import clock


def main(source: str, speed: float | None = None) -> None:
    with streamtag.stream(source, speed=speed) as live:
        try:
            for event in live:
                if isinstance(event, streamtag.Segment):
                    title = f"  ♪ {event.title}" if event.title else ""
                    print(f"{clock(event.start)}-{clock(event.end)} {event.family} ({event.genre}, "
                          f"{event.confidence:.2f}){title}", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
