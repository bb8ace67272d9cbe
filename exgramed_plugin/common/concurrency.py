"""A bounded thread pool whose results are handled in the calling thread, safe to interrupt.

Why its own module: the LLM tools (``extend-captions``, ``eval-chat``, the MedEvalKit judge) send
many slow, paid-for requests at once. ``concurrent.futures`` alone drops finished answers on
Ctrl-C and lets several threads write the progress file; here one thread (the caller) handles every
result, and requests already in flight when Ctrl-C arrives are still waited for and handed over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

logger = logging.getLogger(__name__)


def run_concurrently(items: Sequence[Any], worker: Callable[[Any], Any], on_result: Callable[[Any, Any], None], *,
                     concurrency: int, desc: str, show_progress: bool | None = None) -> bool:
    """Run ``worker(item)`` on a pool of ``concurrency`` threads; ``on_result(item, result)`` runs in
    the calling thread as results arrive (one writer, no locks). Returns True when interrupted.

    On Ctrl-C, queued items are cancelled and the requests already in flight are waited for and
    handed to ``on_result`` too, so their answers are not lost; a second Ctrl-C abandons them.
    ``show_progress=None`` shows a tqdm bar only on a terminal.
    """
    from tqdm import tqdm

    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="exgramed-llm")
    futures: dict[Future, Any] = {pool.submit(worker, item): item for item in items}
    handled: set[Future] = set()
    bar = tqdm(total=len(futures), desc=desc, disable=(None if show_progress is None else not show_progress),
               dynamic_ncols=True)
    try:
        for future in as_completed(futures):
            result = future.result()
            handled.add(future)  # before on_result: a Ctrl-C inside it must not hand the result over twice
            on_result(futures[future], result)
            bar.update(1)
        pool.shutdown(wait=True)
        return False
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        in_flight = [f for f in futures if f not in handled and not f.cancelled()]
        logger.warning("interrupted: waiting for %d request(s) in flight (Ctrl-C again to abandon them)",
                       len(in_flight))
        try:
            for future in in_flight:
                try:
                    result = future.result()
                except BaseException:  # noqa: BLE001 (a worker that died with the interrupt)
                    continue
                handled.add(future)
                on_result(futures[future], result)
                bar.update(1)
        except KeyboardInterrupt:
            logger.warning("abandoned the requests in flight")
        return True
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
