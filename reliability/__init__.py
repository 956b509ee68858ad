"""The reliability suite: hostile input, faults and sustained load against the real parts.

``python -m reliability`` (``make reliability``; ``make reliability-fast`` in CI) starts one
embedded broker and runs each scenario against real ``outreach worker`` / ``outreach
scheduler`` processes, a real SQLite or PostgreSQL store and the real Twilio and SendGrid SDKs
talking to local doubles, then prints a table: what was tried, what held, PASS or FAIL, how
long it took. Scenarios: ``reliability.hostile`` (malformed input), ``reliability.faults``
(SIGKILLs, broker, database and provider outages), ``reliability.load`` (a fixed offered rate
for minutes). docs/reliability.md says what each asserts.
"""

import sys
from pathlib import Path

# the live tests' helpers (worker processes, provider doubles, the cuttable proxy) and the
# benchmark's latency poller are reused as they are, not copied
_REPO = Path(__file__).resolve().parent.parent
for _folder in (_REPO / "tests", _REPO / "bench"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
