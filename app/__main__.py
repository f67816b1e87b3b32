"""`python -m app`: serve with host, port, log level and grace period from the settings;
exits 0 after a graceful SIGTERM shutdown."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from app.logs import configure_logging
from app.settings import Settings, describe_error


def prepare_multiprocess_dir() -> None:
    """With PROMETHEUS_MULTIPROC_DIR set: create it, and drop the previous run's value files
    (counters would otherwise carry on from a run that is gone, as prometheus-client warns)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def main() -> None:
    """Run uvicorn; WEB_CONCURRENCY workers (default 1)."""
    try:
        s = Settings()
    except ValidationError as e:
        raise SystemExit(describe_error(e)) from None
    prepare_multiprocess_dir()  # before any worker starts writing there
    # uvicorn drains in-flight requests on SIGTERM (up to the grace period), then re-raises the
    # signal so the default handler kills the process (status -15, 143 in Docker). A drained
    # shutdown is a clean exit: make that re-raise a no-op so we return and exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # uvicorn's messages in our format (log_config=None: uvicorn installs no handlers of its
    # own), and no second access line per request next to app.access's.
    configure_logging(s.log_level, s.log_format)
    uvicorn.run(
        "app.main:app",
        host=s.host,
        port=s.port,
        workers=int(os.environ.get("WEB_CONCURRENCY", "1")),
        log_level=s.log_level.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(s.graceful_timeout_s),  # uvicorn takes whole seconds
    )


if __name__ == "__main__":
    main()
