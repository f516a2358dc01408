"""One memory budget for the process: the bytes that uploads and readers may
hold at once.

``BUDGET`` is shared by every add of every store in the process (the FUSE
daemon sets its limit from ``memory_mib``; a program using gsfs.multi_backend
directly has no limit unless it calls ``BUDGET.set_limit``). Who draws on it:

* s3 part buffers (gsfs/drivers/s3.py ``_PartBuffers``): a buffer is drawn
  when it is allocated and given back when the upload ends;
* the FUSE upload queues (gsfs/fs/write_session.py ``UploadPipe``): the bytes
  written and not yet read by the driver;
* the FUSE prefetch windows (gsfs/fs/read_session.py ``ReadSession``): a block
  is drawn when its fetch starts and given back when it leaves the window.
  A block a read needs is taken even over the limit (``force``); the blocks
  ahead of the reader only while they fit (``try_draw``), never waited for.

A request waits while the budget is spent, except when the budget holds
nothing at all (so one part larger than the whole budget still goes). Waits
end because what is drawn is given back without drawing more: a part being
uploaded, or queued bytes being read by the driver.

Worker threads wait on ``cond`` (s3's part buffers share it as their lock);
the trio side uses ``try_draw`` and, when that fails, ``wait_for`` with a
trio Event that the next ``give`` or ``wake`` sets.
"""

import threading


class Budget:
    def __init__(self, limit=None):
        self.limit = limit          # bytes, or None: no limit
        self.used = 0
        self.peak = 0               # the most ever drawn at once (user.gsfs.status)
        self.cond = threading.Condition()
        self._waiters = []          # (trio token, trio Event) of trio-side waiters

    def set_limit(self, limit):
        with self.cond:
            self.limit = limit
            self.cond.notify_all()

    def _fits(self, n):
        return self.limit is None or not self.used or self.used + n <= self.limit

    def _take(self, n):
        self.used += n
        self.peak = max(self.peak, self.used)

    def status(self):
        return {"budget_bytes": self.limit, "used_bytes": self.used,
                "peak_bytes": self.peak}

    def try_draw(self, n):
        with self.cond:
            if not self._fits(n):
                return False
            self._take(n)
            return True

    def force(self, n):
        """Take ``n`` bytes even over the limit (a caller that holds nothing
        else must be able to go on)."""
        with self.cond:
            self._take(n)

    def give_locked(self, n):
        """Give back ``n`` bytes while holding ``cond``; call ``wake()`` once
        it is released."""
        self.used -= n
        self.cond.notify_all()

    def give(self, n):
        """Give back ``n`` bytes. Never call it while holding ``cond``."""
        if n <= 0:
            return
        with self.cond:
            self.give_locked(n)
        self.wake()

    def wake(self):
        """Set the trio-side waiters' Events (not while holding ``cond``)."""
        with self.cond:
            waiters, self._waiters = self._waiters, []
        for token, event in waiters:
            _set_event(token, event)

    def wait_for(self, n, token, event):
        """Register a trio Event to be set at the next give() or wake(), unless
        ``n`` bytes fit now (then False: try again)."""
        with self.cond:
            if self._fits(n):
                return False
            self._waiters.append((token, event))
            return True


def _set_event(token, event):
    import trio

    try:
        trio.lowlevel.current_trio_token()
        in_trio = True
    except RuntimeError:
        in_trio = False
    if in_trio:
        event.set()
    else:
        try:
            token.run_sync_soon(event.set)      # queued, not waited for
        except trio.RunFinishedError:
            pass


BUDGET = Budget()
