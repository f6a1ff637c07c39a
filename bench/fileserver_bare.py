"""The reference the fileserver is measured against: a bare twisted.web resource.

One leaf Resource that answers every GET with the same bytes the fileserver serves (and its
Content-Type), on a plain ``server.Site`` with nothing else: no checks, no metrics, no MQTT.
What the fileserver costs beyond this is its own work. Started by bench/fileserver_bench.py:

    python bench/fileserver_bare.py PORT FILE
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web import resource, server


class Bare(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/xml")
        return self.body


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "rb") as f:
        body = f.read()
    site = server.Site(Bare(body))
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
