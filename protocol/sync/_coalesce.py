"""Coalescing of configuration changes into pushes (the shell owns the clock and sleeps)."""

from __future__ import annotations

__all__ = ["PushCoalescer"]


class PushCoalescer:
    """Turn a stream of "config changed" notifications into few exports.

    Kong's behaviour (``db_update_frequency``): the first change after a quiet period is
    pushed at once; changes that follow within ``window`` seconds of a push are coalesced into
    one push at the end of the window. The shell calls :meth:`changed` on every change,
    sleeps until :meth:`due_at`, then calls :meth:`take`; when it returns True it exports
    and encodes the new version once (``encode_snapshot``) and hands it to every session.
    """

    def __init__(self, window: float) -> None:
        if not window >= 0:
            raise ValueError("window must be >= 0")
        self.window = window
        self._pending_since: float | None = None
        self._last_push: float | None = None

    @property
    def pending(self) -> bool:
        return self._pending_since is not None

    def changed(self, now: float) -> None:
        """Record a change at *now* (idempotent while a push is pending)."""
        if self._pending_since is None:
            self._pending_since = now

    def due_at(self) -> float | None:
        """When the pending push is due; None if nothing changed since the last push."""
        if self._pending_since is None:
            return None
        if self._last_push is None:
            return self._pending_since
        return max(self._pending_since, self._last_push + self.window)

    def take(self, now: float) -> bool:
        """True (and the change is consumed) if a push is due at *now*."""
        due = self.due_at()
        if due is None or now < due:
            return False
        self._pending_since = None
        self._last_push = now
        return True
