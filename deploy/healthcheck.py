"""Container healthchecks of the compose file: ``python /app/healthcheck.py api|worker|scheduler``.

Exits 0 when healthy, 1 with a one-line reason on stderr when not (Docker keeps the last
output of each check: ``docker inspect --format '{{json .State.Health}}' CONTAINER``).

- ``api``: ``GET /readyz`` on the local port answers 200 (the database answers and the Kafka
  producer is connected).
- ``worker``: this container's worker has reported its clock to the store recently. Every
  ``outreach worker`` writes a row to the ``clocks`` table every 0.5 s from the moment its
  consumer has started (member ``<hostname>:<pid>:<id>``), whatever its assignment; a worker
  whose loop or database connection is stuck stops writing it.
- ``scheduler``: the store answers and, on PostgreSQL, some process holds the ``scheduler``
  claim (the session advisory lock the active scheduler takes). The same check on the active
  scheduler and its standby: a standby takes the claim within a second of the active one's
  death, so "nobody holds it" for longer than the check's retries means neither can schedule.

Uses only what the engine's image already has (SQLAlchemy, the standard library); reads the
same ``OUTREACH_*`` variables as the engine.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request

import sqlalchemy as sa

STALE_AFTER = float(os.environ.get("OUTREACH_HEALTH_STALE_AFTER", "30"))  # seconds
# the advisory lock key of Store.hold_exclusive("scheduler"): pg_try_advisory_lock(hashtext(...))
# as a bigint; pg_locks shows its high half in classid and its low half in objid (objsubid 1)
_CLAIM_HELD = sa.text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND ((classid::bigint << 32) | objid::bigint) = hashtext(:name)::bigint"
)


def _database() -> sa.Engine:
    url = os.environ.get("OUTREACH_DATABASE_URL", "sqlite:///outreach.db")
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def check_api() -> str | None:
    """None if ``/readyz`` answers 200, else why not."""
    port = int(os.environ.get("OUTREACH_PORT", "8000"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:  # noqa: S310 - fixed http URL
            return None if answer.status == 200 else f"/readyz answered {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"/readyz answered {exc.code}: {exc.read()[:200]!r}"
    except OSError as exc:
        return f"/readyz did not answer: {exc}"


def check_worker() -> str | None:
    """None if a worker of this host reported its clock within ``STALE_AFTER`` seconds."""
    group = os.environ.get("OUTREACH_GROUP_ID", "outreach")
    host = socket.gethostname()
    query = sa.text("SELECT member, seen_at FROM clocks WHERE consumer_group = :group")
    with _database().connect() as conn:
        rows = conn.execute(query, {"group": group}).all()
    seen = [float(at) for member, at in rows if str(member).split(":", 1)[0] == host]
    if not seen:
        return f"no clock of a worker on {host} in group {group!r} yet"
    age = time.time() - max(seen)
    return None if age <= STALE_AFTER else f"the worker's clock is {age:.0f}s old"


def check_scheduler() -> str | None:
    """None if the store answers and (PostgreSQL) a scheduler holds the claim."""
    engine = _database()
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        if engine.dialect.name != "postgresql":
            return None  # SQLite: the claim is a flock on the database host, not visible here
        held = conn.execute(_CLAIM_HELD, {"name": "scheduler"}).scalar()
    return None if held else "no scheduler holds the 'scheduler' claim on the store"


CHECKS = {"api": check_api, "worker": check_worker, "scheduler": check_scheduler}


def main(argv: list[str]) -> int:
    """Run the check named in ``argv``; the exit code Docker reads."""
    if len(argv) != 2 or argv[1] not in CHECKS:
        print(f"usage: healthcheck.py {'|'.join(CHECKS)}", file=sys.stderr)
        return 2
    try:
        problem = CHECKS[argv[1]]()
    except Exception as exc:  # the database is away, a table is missing...: unhealthy
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
