"""Recording method calls: one audit row per call and the instance's ``last_used_at``.

Calls are recorded off the request path: `UsageRecorder.record` only queues the row; a
background thread writes queued rows in batches (one transaction per batch: the audit rows
and one ``last_used_at`` update per instance), at most ``interval`` seconds after a call.
`flush` writes everything queued so far and waits for it; `close` flushes and stops the
thread, and runs at interpreter exit. A batch that cannot be written (database down) is
retried on the next round, so rows are lost only if the process dies before the database
comes back.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.models import instances
from prefect_integrations.store import audit

__all__ = ["CallRecord", "UsageRecorder"]

_logger = logging.getLogger(__name__)
_MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What one method call leaves in the audit log (never inputs or credentials)."""

    instance_id: str
    integration_id: str
    method_id: str
    actor: str
    outcome: audit.Outcome
    details: Mapping[str, Any]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class UsageRecorder:
    """Batches call records into the audit log from a background thread."""

    def __init__(self, db: Database, *, interval: float = 0.2, batch_size: int = 500) -> None:
        self._db = db
        self._interval = interval
        self._batch_size = batch_size
        self._pending: list[CallRecord] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._writing = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        finalizer = weakref.finalize(self, UsageRecorder._close_at_exit, weakref.ref(self))
        finalizer.atexit = False
        atexit.register(UsageRecorder._close_at_exit, weakref.ref(self))

    @staticmethod
    def _close_at_exit(ref: weakref.ReferenceType[UsageRecorder]) -> None:
        recorder = ref()
        if recorder is not None:
            recorder.close()

    def record(self, record: CallRecord) -> None:
        """Queue one call record; returns at once."""
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:
                self._pending.pop(0)
                _logger.error("Audit queue full: dropped the oldest call record")
            self._pending.append(record)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="prefect-integrations-usage", daemon=True
                )
                self._thread.start()
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write every queued record now; True when all were written."""
        self._write_pending()
        with self._lock:
            done = self._idle.wait_for(lambda: self._writing == 0, timeout=timeout)
            return done and not self._pending

    def close(self) -> None:
        """Flush and stop the background thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._write_pending()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._write_pending()
            with self._lock:
                if self._closed:
                    return

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._writing += 1
        try:
            for start in range(0, len(batch), self._batch_size):
                chunk = batch[start : start + self._batch_size]
                try:
                    self._write(chunk)
                except Exception as exc:  # the database may be down: keep the rows
                    _logger.warning(
                        "Could not write %d call record(s) to the audit log (%s); will retry",
                        len(batch) - start,
                        type(exc).__name__,
                    )
                    with self._lock:
                        self._pending[:0] = batch[start:]
                    return
        finally:
            with self._lock:
                self._writing -= 1
                self._idle.notify_all()

    def _write(self, records: list[CallRecord]) -> None:
        if not records:
            return
        last_used: dict[str, datetime] = {}
        for rec in records:
            if rec.outcome == "success":
                prev = last_used.get(rec.instance_id)
                last_used[rec.instance_id] = max(prev, rec.at) if prev else rec.at
        with self._db.transaction("record method calls") as session:
            # Instance rows first, audit log second: the order every other writer uses
            # (a row lock, then the audit chain's lock), so the two never deadlock.
            for instance_id, at in sorted(last_used.items()):
                session.execute(
                    sa.update(instances)
                    .where(instances.c.instance_id == instance_id)
                    .where(
                        sa.or_(instances.c.last_used_at.is_(None), instances.c.last_used_at < at)
                    )
                    .values(last_used_at=at)
                )
            audit.record_many(
                session,
                (
                    audit.AuditRow(
                        action=audit.AuditAction.METHOD_CALL,
                        actor=r.actor,
                        instance_id=r.instance_id,
                        integration_id=r.integration_id,
                        outcome=r.outcome,
                        details={"method": r.method_id, "at": r.at.isoformat(), **r.details},
                    )
                    for r in records
                ),
            )
