"""The worker-process protocol of phase 1: chunks out, index batches back.

The calling process only finds chunk boundaries (NDJSON byte ranges, or batches of
items) and gathers what workers send back; each worker process builds its own `Worker`
(validator, plans, part writers) and tunes its own garbage collector. Nothing is tuned
in the calling process: under `cluster=debug` that is the launcher itself.

Messages on the result queue: ("chunk", first seq, ChunkResult), ("error", traceback text),
("closed", worker name). A task is (first seq, packed chunk); None tells a worker to stop.
Each worker notes the first seq of the block it takes in shared memory, so when one dies
without a word (SIGKILL, OOM) the error names the file and lines it held.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from clinsynth.fhir.jsonio import PARSE_RECURSION_LIMIT, deep_stack, too_deep_detail
from clinsynth.ingest.options import Options
from clinsynth.ingest.sources import Item, NdjsonSource, batched, read_range
from clinsynth.ingest.worker import ChunkResult, Worker

#: NDJSON lines average ~900 bytes: a byte range of chunk * 900 bytes holds about `chunk` resources
BYTES_PER_RESOURCE = 900


def tune_gc() -> None:
    """Worker processes only: millions of short-lived dicts and no reference cycles, so the cyclic
    GC would only rescan the same objects over and over (measured: ~30% of the time)."""
    gc.freeze()
    gc.set_threshold(200_000, 50, 1000)


def pack(items: list[Item]) -> tuple[Any, ...]:
    """Raw NDJSON lines travel to workers as bytes, not as pickled objects (a third of the cost).
    Parsed items are pickled here, not by the queue's feeder thread: a pickling error there (a
    resource nested too deeply) would only be printed, and the chunk lost without a trace."""
    if all(it.raw is not None and it.error is None for it in items):
        return ("raw", [it.source for it in items], [it.line for it in items], [it.raw for it in items])
    try:
        with deep_stack(PARSE_RECURSION_LIMIT):
            return ("pickled", pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL), _span(items))
    except RecursionError:  # one of them is nested too deeply to travel: it goes as its verdict
        kept = []
        for it in items:
            try:
                with deep_stack(PARSE_RECURSION_LIMIT):
                    pickle.dumps(it, protocol=pickle.HIGHEST_PROTOCOL)
                kept.append(it)
            except RecursionError:
                kept.append(
                    Item(it.source, it.line, location=it.location, error=too_deep_detail(), reason="too_deep")
                )
        return ("pickled", pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL), _span(items))


def unpack(packed: tuple[Any, ...]) -> list[Item]:
    if packed[0] == "range":
        return read_range(*packed[1:])
    if packed[0] == "raw":
        return [Item(s, n, r) for s, n, r in zip(packed[1], packed[2], packed[3], strict=True)]
    with deep_stack(PARSE_RECURSION_LIMIT):
        items: list[Item] = pickle.loads(packed[1])
    return items


def _tasks(items: Iterable[Item], chunk: int) -> Iterator[tuple[tuple[Any, ...], int]]:
    """(packed chunk, how many seqs it may use); NDJSON folders go as byte ranges that workers
    read themselves, so the calling process only finds line boundaries."""
    if isinstance(items, NdjsonSource):
        for r in items.ranges(max(1 << 16, chunk * BYTES_PER_RESOURCE)):
            yield (("range", *r[0]), r[1]) if isinstance(r, tuple) else (pack(r), len(r))
    else:
        for c in batched(items, chunk):
            yield pack(c), len(c)


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this worker when the ingest process dies (kill -9, OOM), so no
    worker is left blocked on a queue nobody reads."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the daemon flag still ends us with a clean parent exit
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(
    parts: Path,
    name: str,
    opts: Options,
    tasks: Any,
    results: Any,
    parent_pid: int | None = None,
    holding: Any = None,
    slot: int = 0,
) -> None:
    """Entry point of a worker process: its own GC settings and its own Worker. `holding[slot]`
    (shared memory: it survives a SIGKILL) is the first seq of the last block this worker took."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    tune_gc()
    w = Worker(parts, name, opts)
    try:
        while (task := tasks.get()) is not None:
            seq0, packed = task
            if holding is not None:
                holding[slot] = seq0
            results.put(("chunk", seq0, w.chunk(seq0, unpack(packed))))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise
    finally:
        w.close()
        results.put(("closed", name))


def describe(packed: tuple[Any, ...], n_items: int) -> str:
    """The block a task holds, for messages: `Patient.ndjson lines 1–8`, `b.json entry[0]–entry[9]`."""
    if packed[0] == "range":
        _path, _start, _end, first, name = packed[1:]
        return f"{name} lines {first}–{first + max(n_items, 1) - 1}"
    if packed[0] == "raw":
        sources, lines = packed[1], packed[2]
        where = sources[0] if sources[0] == sources[-1] else f"{sources[0]}…{sources[-1]}"
        return f"{where} lines {lines[0]}–{lines[-1]}"
    return packed[-1]  # pickled items carry their description


def _span(items: list[Item]) -> str:
    first, last = items[0], items[-1]
    where = first.source if first.source == last.source else f"{first.source}…{last.source}"
    if first.line is not None and last.line is not None:
        return f"{where} lines {first.line}–{last.line}"
    return f"{where} {first.location or '?'}–{last.location or '?'}"


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


def run(
    items: Iterable[Item],
    parts: Path,
    opts: Options,
    workers: int,
    chunk: int,
    on_chunk: Callable[[ChunkResult], None],
) -> None:
    """Feed every item to `workers` processes (0: this process, untuned, for debuggers and
    profilers); each chunk's result goes to `on_chunk` in this process, in completion order.
    An exception from `on_chunk` or a worker stops every worker; so does a worker that dies
    (OOM killer, kill -9): the error names it, its signal and the block it held (its part file has
    no footer, so none of its blocks could be used; the run fails instead of hanging or losing them)."""
    if workers <= 0:
        w = Worker(parts, "w0", opts)
        try:
            seq = 0
            for c in batched(items, chunk):
                on_chunk(w.chunk(seq, c))
                seq += len(c)
        finally:
            w.close()
        return
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(maxsize=2 * workers), ctx.Queue()
    holding = ctx.Array("q", [-1] * workers, lock=False)  # per worker: seq0 of its last block
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(parts, f"w{i}", opts, tasks, results, os.getpid(), holding, i),
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    closed: set[str] = set()
    pending: dict[int, str] = {}  # seq0 -> description, for blocks sent and not yet returned

    def take(msg: tuple[Any, ...]) -> None:
        if msg[0] == "chunk":
            pending.pop(msg[1], None)
            on_chunk(msg[2])
        elif msg[0] == "error":
            raise RuntimeError(f"an ingest worker failed: {msg[1]}")
        else:
            closed.add(msg[1])

    def check_alive() -> None:
        """A worker gone without saying goodbye fails the run, naming the block it held."""
        gone = [i for i, p in enumerate(procs) if p.exitcode is not None and f"w{i}" not in closed]
        if not gone:
            return
        while True:  # its goodbye (or error) may still be in the pipe
            try:
                take(results.get(timeout=0.2))
            except queue.Empty:
                break
        for i in sorted(gone, key=lambda i: (procs[i].exitcode or 0) >= 0):  # the killed ones first
            if f"w{i}" in closed:
                continue
            seq0 = holding[i]
            if seq0 in pending:
                what = f"while reading {pending[seq0]}"
            elif seq0 >= 0:
                what = "between blocks (its parts are lost with it)"
            else:
                what = "before it took a block"
            raise RuntimeError(
                f"ingest worker {i} {_how(procs[i].exitcode)} {what}: it died without finishing, so the run "
                "stops rather than lose its records (an OOM kill? see `dmesg`; fewer ingest.workers or "
                "more memory)"
            )

    def drain(block: bool) -> None:
        """Take what has arrived (non-blocking), or wait up to 0.5 s for one message."""
        while True:
            try:
                msg = results.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                check_alive()
                return
            take(msg)
            if block:
                return

    finished = False
    try:
        seq = 0
        for packed, n_items in _tasks(items, chunk):
            pending[seq] = describe(packed, n_items)
            while True:
                try:
                    tasks.put((seq, packed), timeout=0.2)
                    break
                except queue.Full:
                    drain(block=False)
            seq += n_items  # an upper bound for ranges (blank lines): seqs stay unique and ordered
            drain(block=False)
        for _ in procs:
            while True:
                try:
                    tasks.put(None, timeout=0.2)
                    break
                except queue.Full:
                    drain(block=False)
        while len(closed) < len(procs):
            drain(block=True)
            check_alive()
        finished = True
    finally:
        for p in procs:
            if not finished:  # the source, a worker or on_chunk failed: do not wait for idle workers
                p.kill()
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
