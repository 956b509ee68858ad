"""Scheduling: the core's "later" work (timers) run by APScheduler, one active scheduler per
store with hot standbys. See ``outreach.scheduling.scheduler``.

Must not import: the decision core's internals, faust, twilio, sendgrid, openai, fastapi.
"""

from __future__ import annotations

from outreach.scheduling.scheduler import (
    SchedulerOptions,
    SchedulerSettings,
    SchedulerStats,
    TimerScheduler,
    fire_timer,
    timer_value,
)

__all__ = [
    "SchedulerOptions",
    "SchedulerSettings",
    "SchedulerStats",
    "TimerScheduler",
    "fire_timer",
    "timer_value",
]
