"""Three ways to run `scan_prompt` over many prompts; each yields results as they complete.

- inline: this process, in file order;
- processes: `workers` spawned processes (concurrent.futures), each opening the models once in its
  initializer and taking prompts from the executor's queue;
- dask: a Dask distributed cluster at an address (`qdbg[cluster]`); the workers open the GGUF files
  at the same (absolute) paths, so those must be on storage they share.

Each runner is a generator: closing it early (Ctrl-C in the consumer) cancels the work not started
and stops the workers it started.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterator, Sequence

from qdbg.errors import UsageError
from qdbg.scan.prompts import PromptItem
from qdbg.scan.work import PromptResult, ScanConfig, context_for, scan_prompt

DASK_TIMEOUT = "10s"
# one worker per core: each worker's BLAS (NumPy's norms and dots in qdbg.metrics) runs one thread;
# several BLAS threads per worker on shared cores spin and wait (measured: a scan 8x slower)
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_inline(config: ScanConfig, items: Sequence[PromptItem]) -> Iterator[PromptResult]:
    for item in items:
        yield scan_prompt(config, item)


def _init_worker(config: ScanConfig) -> None:
    """Process initializer: the parent handles Ctrl-C; open the models once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context_for(config)


def run_processes(config: ScanConfig, items: Sequence[PromptItem], workers: int) -> Iterator[PromptResult]:
    """`workers` processes (spawned, so no lock or thread of this process is inherited)."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(config,))
    finished = False
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    try:
        os.environ.update(WORKER_ENV)  # the spawned workers inherit it (they start on submit)
        try:
            pending = {ex.submit(scan_prompt, config, it) for it in items}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
        finished = True
    finally:
        if finished:
            ex.shutdown(wait=True)
        else:
            procs = list(getattr(ex, "_processes", {}).values())  # the workers this call started
            ex.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(timeout=5)


def connect_dask(address: str):
    """A dask.distributed Client of the scheduler at `address`; UsageError if it cannot be had."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'qdbg[cluster]'") from None
    try:
        return Client(address, timeout=DASK_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {msg}") from None


def run_dask(config: ScanConfig, items: Sequence[PromptItem], address: str) -> Iterator[PromptResult]:
    """Submit every prompt to the cluster at `address`; results as they complete."""
    from dask.distributed import as_completed

    client = connect_dask(address)
    futs = []
    try:
        futs = client.map(scan_prompt, [config] * len(items), list(items), pure=False)
        for f in as_completed(futs):
            yield f.result()
    finally:
        client.cancel(futs)
        client.close()
