"""The async side of the buffer: in-memory queue -> batched commits on one dedicated thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from agent.buffer import CommitResult, Fault, Outbox, PendingEvent, write_fault
from agent.model import Reading

log = logging.getLogger(__name__)
T = TypeVar("T")

AcceptListener = Callable[[int, Reading], None]

# Acknowledged rows are safe at the broker: deleting them is not urgent. Acks alone wait up to
# this long and normally ride along with the next commit of readings (one transaction, one
# fsync, instead of one extra commit per PUBACK at light load).
ACK_LINGER = 5.0
SYNC_RETRY = 0.1  # an incomplete WAL sync (a reader held frames back) is retried this soon


class Pipeline:
    """Owns the outbox thread: drivers `submit`, the writer commits, the uplink reads and acks."""

    def __init__(self, outbox: Outbox, *, commit_interval: float = 0.5, queue_size: int = 100_000,
                 batch_max: int = 5000, sync_interval: float = 2.0) -> None:
        self.outbox = outbox
        self.commit_interval = commit_interval
        self.sync_interval = sync_interval  # synchronous=NORMAL: WAL syncs at most this often
        self._sync_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._last_sync = -1e18
        self.hurry = asyncio.Event()  # set at stop: sync at once (the stop waits for the PUBACKs)
        self.queue_size = queue_size
        self.batch_max = batch_max
        self._queue: collections.deque[Reading] = collections.deque()
        self._acks: list[tuple[int, int]] = []
        self._acks_since = 0.0  # monotonic time of the oldest pending ack
        self.ack_linger = ACK_LINGER
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._wake = asyncio.Event()
        self.new_data = asyncio.Event()  # set after every commit that accepted readings
        self.new_events = asyncio.Event()
        self.listeners: list[AcceptListener] = []
        self.gap_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.accepted = 0
        self.overflow = 0  # readings refused because the in-memory queue was full
        self.rejected = 0
        self.commits = 0
        self.last_commit = time.monotonic()  # progress marker for the watchdog
        self.last_commit_duration = 0.0
        self.busy_since: float | None = None
        self._inflight = 0  # readings of the commit under way: still in memory, counted in the bound
        self._closed = False
        # "ok", or the Fault keeping commits from the disk: readings (bounded by queue_size),
        # acks and events then wait in memory and the writer retries every second.
        self.writer: Literal["ok"] | Fault = "ok"
        self.writer_detail = ""
        self._events: list[PendingEvent] = []
        self._full_batch = 0
        # The uplink, caught up and waiting, asks for the rows the next commit adds: they are
        # fetched in the same buffer-thread job as the commit (one thread round trip, not two).
        self._want: tuple[int, int, int] | None = None  # (token, after_seq, limit)
        self._fetched: tuple[int, list[tuple[int, str]]] | None = None  # (token, rows)
        self._tokens = 0

    # -- thread helpers -----------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the buffer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @classmethod
    async def open(cls, outbox: Outbox, **kw: Any) -> Pipeline:
        self = cls(outbox, **kw)
        await self.call(outbox.open)
        await self.call(outbox.sync)  # NORMAL: the epoch is on disk before a birth message names it
        return self

    async def durable(self, *, urgent: bool = False) -> None:
        """Wait until everything handed out for publishing so far is on disk.

        FULL: at once. NORMAL: until the next WAL sync, which runs at most every
        `sync_interval` (the NORMAL trade-off: fewer fsyncs, later delivery), or at once when
        `urgent` (a backlog drains: one sync per fetched chunk, as FULL does per commit).
        """
        ob = self.outbox
        if ob.synchronous == "FULL":
            return  # every commit is on disk already: no wait, no buffer-thread round trip
        target = ob.read_mark
        while ob.durable_changes < target:
            async with self._sync_lock:
                if ob.durable_changes >= target:
                    return
                if not urgent:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._last_sync + self.sync_interval - time.monotonic()):
                            await self.hurry.wait()
                try:
                    done = await self.call(ob.sync)
                    pause = SYNC_RETRY
                except Exception as e:  # disk full, I/O error: nothing unsynced goes out
                    fault = write_fault(e, ob.path)
                    if fault is None:
                        raise
                    self._fault(fault, e, "WAL sync; publishing waits for it")
                    done, pause = False, 1.0
                self._last_sync = time.monotonic()
                if not done:
                    await asyncio.sleep(pause)

    # -- producers ------------------------------------------------------------------------
    def submit(self, reading: Reading) -> None:
        """Queue one reading (never blocks); refused and counted when the queue is full."""
        if len(self._queue) + self._inflight >= self.queue_size:
            self.overflow += 1
            if self.overflow in (1, 10, 100) or self.overflow % 10_000 == 0:
                log.error("in-memory queue full (%d): %d readings refused so far", self.queue_size, self.overflow)
            return
        self._queue.append(reading)
        if len(self._queue) == 1 or len(self._queue) >= self.batch_max:
            self._wake.set()

    def ack(self, lo: int, hi: int) -> None:
        """The broker acknowledged seqs lo..hi: delete them at the next commit."""
        if not self._acks:
            self._acks_since = time.monotonic()
            if not self._queue:
                self._wake.set()  # the writer sleeps without a deadline: give it one
        self._acks.append((lo, hi))

    def rewrite_queued(self, fn: Callable[[Reading], Reading]) -> None:
        """Replace every queued (not yet committed) reading by fn(reading) (clock correction)."""
        self._queue = collections.deque(fn(r) for r in self._queue)

    def want_rows(self, after_seq: int, limit: int) -> int:
        """Ask the next commit that accepts readings to fetch_for_send(after_seq, limit); a token."""
        self._tokens += 1
        self._fetched = None
        self._want = (self._tokens, after_seq, limit)
        return self._tokens

    def take_rows(self, token: int) -> list[tuple[int, str]] | None:
        """The rows fetched for `token`, if no later commit may have added more; cancels the wish."""
        self._want = None
        got = self._fetched
        if got is None or got[0] != token:
            return None
        self._fetched = None
        return got[1]

    def _commit_job(self, batch: list[Reading], acks: list[tuple[int, int]],
                    events: list[PendingEvent] | None = None) -> CommitResult:
        """Buffer thread: commit and, in the same transaction, fetch for a waiting uplink
        (prefetched rows of an earlier commit are dropped first: they may miss this commit's rows)."""
        self._fetched = None
        want = self._want
        self.outbox.check_file()
        res = self.outbox.commit(batch, acks, send_after=None if want is None else (want[1], want[2]),
                                 events=events or ())
        if want is not None and res.for_send is not None:
            self._want = None
            self._fetched = (want[0], res.for_send)
        return res

    @property
    def queued(self) -> int:
        """Readings in memory, not yet committed (the commit under way included)."""
        return len(self._queue) + self._inflight

    @property
    def disk_full(self) -> bool:
        return self.writer == "disk_full"

    @property
    def locked(self) -> bool:
        return self.writer == "locked"

    def _fault(self, fault: Fault, e: BaseException, what: str) -> None:
        """A buffer operation failed for a reason of the disk's: say so once per change of state."""
        detail = str(e)[:200]
        if fault != self.writer:
            hint = {
                "disk_full": "the disk is full",
                "locked": f"{self.outbox.path} is locked by another process",
                "read_only": "the filesystem is read-only",
                "io_error": "the disk reports I/O errors",
                "corrupt": "the database file is damaged",
            }[fault]
            log.error("buffer: %s (%s: %s); %d readings wait in memory (at most %d), delivery of what is "
                      "stored goes on, retrying every second", hint, what, detail, len(self._queue), self.queue_size)
        self.writer = fault
        self.writer_detail = detail

    def _cleared(self) -> None:
        if self.writer != "ok":
            log.warning("buffer: writing again (was %s)", self.writer.replace("_", " "))
        self.writer = "ok"
        self.writer_detail = ""

    # -- the writer -------------------------------------------------------------------------
    async def run_writer(self) -> None:
        """Commit every `commit_interval` (or sooner when a batch fills) until cancelled."""
        while True:
            if not self._queue and not self._acks and not self._events:
                await self._wake.wait()
                self._wake.clear()
                continue
            if not self._queue and not self._events:
                # Acks only: wait for readings to commit them with, at most until the linger ends.
                left = self._acks_since + self.ack_linger - time.monotonic()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                    self._wake.clear()
                    continue
            else:
                self._wake.clear()
                if len(self._queue) < self.batch_max:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.commit_interval):
                            while len(self._queue) < self.batch_max:
                                await self._wake.wait()
                                self._wake.clear()
            await self.flush()
            if self.writer != "ok":
                await asyncio.sleep(1.0)

    async def flush(self) -> CommitResult | None:
        """Commit everything queued and every pending ack and event now.

        A failure of the disk's (full, locked, read-only, I/O error) keeps them all in memory,
        in order, for the next try (readings bounded by queue_size: `submit` refuses beyond).
        A commit under way (the writer's) is waited for: once flush() returns, nothing taken from
        the queue is still uncommitted (the stop's settle compares the acks with next_seq).
        """
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> CommitResult | None:
        total: CommitResult | None = None
        while self._queue or self._acks or self._events:
            n = min(len(self._queue), self._full_batch or self.batch_max)
            if n == len(self._queue):
                batch = list(self._queue)
                self._queue.clear()
            else:
                batch = [self._queue.popleft() for _ in range(n)]
            acks, self._acks = self._acks, []
            events, self._events = self._events, []
            t0 = time.monotonic()
            self.busy_since = t0
            self._inflight = len(batch)
            try:
                res = await self.call(self._commit_job, batch, acks, events)
            except Exception as e:
                self._inflight = 0
                self._queue.extendleft(reversed(batch))
                self._acks[:0] = acks
                self._events[:0] = events
                self.busy_since = None
                fault = write_fault(e, self.outbox.path)
                if fault is None:
                    log.exception("buffer commit failed; %d readings kept in memory for retry", len(batch))
                    raise
                self._fault(fault, e, "commit")
                if fault == "disk_full":
                    self._full_batch = max(10, n // 4)  # smaller transactions need less WAL space
                return total
            self.busy_since = None
            self._inflight = 0
            self._cleared()
            self._full_batch = 0
            self.last_commit = time.monotonic()
            self.last_commit_duration = self.last_commit - t0
            self.commits += 1
            self._after_commit(res)
            total = res
        return total

    def _after_commit(self, res: CommitResult) -> None:
        if res.accepted:
            self.accepted += len(res.accepted)
            self.new_data.set()
            for seq, r in res.accepted if self.listeners else ():
                for fn in self.listeners:
                    try:
                        fn(seq, r)
                    except Exception:  # a listener (tail client) must not break ingestion
                        log.exception("accept listener failed")
        self.rejected += res.rejected
        if res.events:
            self.new_events.set()
        if res.gaps:
            self.new_events.set()
            for gap in res.gaps:
                for g in self.gap_listeners:
                    g(gap)

    async def expire(self) -> None:
        try:
            gaps = await self.call(self.outbox.expire)
        except Exception as e:
            fault = write_fault(e, self.outbox.path)
            if fault is None:
                raise
            self._fault(fault, e, "max-age expiry postponed")
            return
        if gaps:
            self.new_events.set()
            for gap in gaps:
                for g in self.gap_listeners:
                    g(gap)

    async def add_event(self, type_: str, body: dict[str, Any]) -> None:
        """Queue a durable event for P/events: the writer stores it at once, in its own commit
        (a disk that refuses keeps it in memory with the readings until it can)."""
        self._events.append((type_, body, time.time()))
        self._wake.set()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`call` for the uplink's reads: a failure of the disk's is reported and retried every
        second instead of ending the session (what is stored keeps going out once it reads)."""
        while True:
            try:
                return await self.call(fn, *args)
            except Exception as e:
                fault = write_fault(e, self.outbox.path)
                if fault is None:
                    raise
                self._fault(fault, e, f"reading for the uplink ({getattr(fn, '__name__', 'read')})")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Flush what is queued, then close the database and the thread."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            await self.call(self.outbox.close)
            self._executor.shutdown(wait=True)
