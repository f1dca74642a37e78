"""`python -m services.jobs`: the jobs API's entry point.

Settings come from the environment (`WALDO_JOBS_*`, settings.py). Settings that do not validate
(no token, a short one, a relative root) are one line on stderr, `waldo-jobs: error: ...`, and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from services.jobs.settings import PROG, JobsSettings, error_line


def serve(app, *, host: str, port: int, log_level: str) -> None:
    """Run `app` over HTTP until stopped, on the inference service's server: uvicorn under
    httpapi.server's connection guard (header and body timeouts, a connection cap)."""
    from httpapi.server import ConnectionLimits
    from httpapi.server import serve as serve_http

    serve_http(app, host=host, port=port, limits=ConnectionLimits(), log_level=log_level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="The Waldo jobs API: submits train, sweep "
                                     "and export jobs to the Ray cluster. Settings: WALDO_JOBS_* "
                                     "environment variables (WALDO_JOBS_TOKEN is required).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="port (default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="server log level (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = JobsSettings()
    except ValidationError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    from services.jobs.app import create_app

    serve(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
