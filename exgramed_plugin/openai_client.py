"""A small client for OpenAI-compatible ``/v1/chat/completions`` endpoints, with bounded retries.

Why our own and not the ``openai`` package: the original scripts retried forever (extended captions)
or for 30 silent rounds (chat review); here every request has a fixed attempt budget, a backoff we
can shrink in tests, and a typed error that says what went wrong, so callers can record failures
instead of looping. It speaks plain HTTP(S) with the standard library, so it works against OpenAI,
OpenRouter, vLLM, ``swift deploy`` or any other server of that protocol.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exgramed_plugin.data.jsonio import read_jsonl

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# HTTP statuses worth retrying: timeouts, conflicts, rate limits, server errors.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 500


class ChatRequestError(RuntimeError):
    """A request that failed for good (attempts exhausted or a non-retryable HTTP status)."""

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


@dataclass(frozen=True)
class ChatReply:
    """The assistant text of the first choice, plus how many HTTP attempts it took."""

    content: str
    attempts: int
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def chat_completions_url(base_url: str) -> str:
    """``http://host:port`` → ``.../v1/chat/completions``; ``.../v1`` → ``.../v1/chat/completions``.

    Accepts what users paste: the OpenAI-style base URL (ending in ``/v1``), a bare server address,
    or the full endpoint.
    """
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url + "/chat/completions"


def is_loopback_url(url: str) -> bool:
    """True for ``localhost`` / 127.0.0.0/8 / ``::1`` URLs (these never go through a proxy)."""
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_client_arguments(parser) -> None:
    """The request options every command using :class:`ChatClient` takes (same names and defaults)."""
    parser.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV,
                        help=f"environment variable holding the API key (default {DEFAULT_API_KEY_ENV}; "
                             "unset = no Authorization header)")
    parser.add_argument("--max-attempts", type=int, default=5, help="HTTP tries per request (default 5)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each try")


def api_key_from_env(name: str = DEFAULT_API_KEY_ENV) -> str | None:
    """The API key in environment variable ``name`` (None when unset or empty)."""
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass
class ChatClient:
    """Bounded-retry client: ``max_attempts`` HTTP tries per call, exponential backoff between them.

    Retried: connection errors, timeouts, HTTP 408/409/425/429/5xx, and 200 replies without a usable
    ``choices[0].message.content``. Not retried: other 4xx (a bad request stays bad). The delay
    before try ``k+1`` is ``min(backoff_max, backoff_base * 2**(k-1))`` times a jitter in [0.5, 1]
    from a per-client RNG (never the global one); ``backoff_base=0`` disables waiting (tests).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    seed: int | None = None
    sleep: Callable[[float], None] = time.sleep
    _url: str = field(init=False, repr=False)
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._url = chat_completions_url(self.base_url)
        # Loopback servers are reached directly even when http(s)_proxy is set in the environment.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback_url(self._url) else []
        self._opener = urllib.request.build_opener(*handlers)
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return self._url

    def _delay(self, attempt: int) -> float:
        if self.backoff_base <= 0:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * (0.5 + 0.5 * self._rng.random())

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self._url, data=json.dumps(payload).encode("utf-8"), headers=headers,
                                         method="POST")
        with self._opener.open(request, timeout=self.timeout) as response:
            body = response.read()
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("reply is not a JSON object")
        return data

    def chat(self, messages: Sequence[dict[str, Any]], *, temperature: float | None = None,
             max_tokens: int | None = None, extra: dict[str, Any] | None = None) -> ChatReply:
        """Send one chat request; returns the first choice's text or raises :class:`ChatRequestError`."""
        payload: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if temperature is not None:
            payload["temperature"] = temperature
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        payload.update(extra or {})
        last_error = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            status: int | None = None
            try:
                data = self._post(payload)
                choice = data["choices"][0]
                content = choice["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError(f"message content is {type(content).__name__}, not a string")
                return ChatReply(content=content, attempts=attempt, finish_reason=choice.get("finish_reason"),
                                 raw=data)
            except urllib.error.HTTPError as error:
                status = error.code
                try:
                    body = error.read().decode("utf-8", "replace")[:MAX_ERROR_BODY]
                except OSError:
                    body = ""
                last_error = f"HTTP {error.code} from {self._url}: {body}"
                if error.code not in RETRY_STATUSES:
                    raise ChatRequestError(last_error, attempts=attempt, status=status) from error
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                last_error = f"cannot reach {self._url}: {getattr(error, 'reason', error)}"
            except (ValueError, KeyError, IndexError, TypeError) as error:
                last_error = f"unusable reply from {self._url}: {type(error).__name__}: {error}"
            if attempt < self.max_attempts:
                delay = self._delay(attempt)
                logger.debug("attempt %d/%d failed (%s); retrying in %.2fs", attempt, self.max_attempts,
                             last_error, delay)
                if delay > 0:
                    self.sleep(delay)
        raise ChatRequestError(f"gave up after {self.max_attempts} attempt(s): {last_error}",
                               attempts=self.max_attempts, status=status)


# --------------------------------------------------------------------------------------------------
# Shared by the LLM tools: crash-safe JSONL progress files and a bounded thread pool.
# --------------------------------------------------------------------------------------------------


def read_jsonl_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL progress file (none if it does not exist yet); a torn last line (crash
    mid-write) is skipped with a warning, a bad line anywhere else is an error naming its position."""
    if not os.path.exists(path):
        return []
    return [record for _, record in read_jsonl(path, drop_torn_last_line=True)]


def run_concurrently(items: Sequence[Any], worker: Callable[[Any], Any], on_result: Callable[[Any, Any], None], *,
                     concurrency: int, desc: str, show_progress: bool | None = None) -> bool:
    """Run ``worker(item)`` on a pool of ``concurrency`` threads; ``on_result(item, result)`` runs in
    the calling thread as results arrive (one writer, no locks). Returns True when interrupted.

    On Ctrl-C, queued items are cancelled and the requests already in flight are waited for and
    handed to ``on_result`` too, so their answers are not lost; a second Ctrl-C abandons them.
    ``show_progress=None`` shows a tqdm bar only on a terminal.
    """
    from concurrent.futures import Future, ThreadPoolExecutor, as_completed

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
