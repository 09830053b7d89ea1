#!/usr/bin/env python3
"""Serves moto's DynamoDB-capable WSGI app on ONE thread: usage `moto_single_thread.py HOST PORT`.

moto_server's default threaded server does not make conditional writes atomic under
concurrent requests; serving the same app with werkzeug's `run_simple(threaded=False)`
handles one request at a time (HTTP/1.0, one request per connection), as real
DynamoDB's atomic conditional writes behave. Used by tests/reports_store.rs.
Install moto first with scripts/install-moto.sh.
"""

import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} HOST PORT", file=sys.stderr)
        return 2
    host = argv[1]
    try:
        port = int(argv[2])
    except ValueError:
        print(f"moto_single_thread.py: PORT must be a number, got {argv[2]!r}", file=sys.stderr)
        return 2

    try:
        from werkzeug.serving import run_simple
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
    except ImportError as err:
        print(
            f"moto_single_thread.py: moto[server] is not importable ({err}); "
            "run scripts/install-moto.sh",
            file=sys.stderr,
        )
        return 1

    # Exit cleanly on SIGTERM/SIGINT like moto_server does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
