"""A client for OpenAI-compatible ``/v1/chat/completions`` endpoints with a fixed attempt budget.

Why a wrapper around the ``openai`` package: the original scripts retried forever (extended
captions) or for 30 silent rounds (chat review). Here the package speaks HTTP (OpenAI, OpenRouter,
vLLM, ``swift deploy`` or any other server of that protocol), while every request gets a fixed
number of attempts, a backoff we can shrink in tests, and one typed error that says what went wrong
(URL, HTTP status, reply body), so callers can record failures instead of looping. The package's
own retries are switched off: they neither count attempts for us nor retry the statuses and
unusable replies we retry.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# HTTP statuses worth retrying: timeouts, conflicts, rate limits, server errors.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 500
_ENDPOINT = "/chat/completions"
# openai.OpenAI insists on a key; with this one and the Authorization header omitted per request,
# a server without authentication gets no header at all (and no key is read from the environment).
_NO_KEY = "no-api-key"


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
    if url.endswith(_ENDPOINT):
        return url
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url + _ENDPOINT


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


def _first_choice_text(completion: Any) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of the first choice; ValueError/TypeError/IndexError otherwise."""
    if not isinstance(completion, ChatCompletion):
        raise TypeError(f"reply is a JSON {type(completion).__name__}, not an object")
    if not completion.choices:
        raise IndexError("reply has no choices")
    choice = completion.choices[0]
    content = None if choice.message is None else choice.message.content
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not a string")
    return content, choice.finish_reason


@dataclass
class ChatClient:
    """Bounded-retry client: ``max_attempts`` HTTP tries per call, exponential backoff between them.

    Retried: connection errors, timeouts, HTTP 408/409/425/429/5xx, and 200 replies without a usable
    ``choices[0].message.content``. Not retried: other 4xx (a bad request stays bad). The delay
    before try ``k+1`` is ``min(backoff_max, backoff_base * 2**(k-1))`` times a jitter in [0.5, 1]
    from a per-client RNG (never the global one); ``backoff_base=0`` disables waiting (tests).
    ``api_key=None`` sends no Authorization header; loopback servers are reached without the
    ``http(s)_proxy`` of the environment.
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
    _client: openai.OpenAI = field(init=False, repr=False)
    _headers: dict[str, Any] = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._url = chat_completions_url(self.base_url)
        # trust_env=False: loopback servers are reached directly even when http(s)_proxy is set.
        http_client = openai.DefaultHttpxClient(trust_env=False) if is_loopback_url(self._url) else None
        self._client = openai.OpenAI(base_url=self._url[: -len(_ENDPOINT)], api_key=self.api_key or _NO_KEY,
                                     max_retries=0, timeout=self.timeout, http_client=http_client)
        self._headers = {} if self.api_key else {"Authorization": openai.omit}
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return self._url

    def _delay(self, attempt: int) -> float:
        if self.backoff_base <= 0:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * (0.5 + 0.5 * self._rng.random())

    def chat(self, messages: Sequence[dict[str, Any]], *, temperature: float | None = None,
             max_tokens: int | None = None) -> ChatReply:
        """Send one chat request; returns the first choice's text or raises :class:`ChatRequestError`.

        ``temperature`` / ``max_tokens`` None are not sent (the server's defaults apply).
        """
        last_error = "no attempt made"
        status: int | None = None
        for attempt in range(1, self.max_attempts + 1):
            status = None
            try:
                completion = self._client.chat.completions.create(
                    model=self.model, messages=list(messages),
                    temperature=openai.omit if temperature is None else temperature,
                    max_tokens=openai.omit if max_tokens is None else max_tokens, extra_headers=self._headers)
                content, finish_reason = _first_choice_text(completion)
                return ChatReply(content=content, attempts=attempt, finish_reason=finish_reason,
                                 raw=completion.model_dump(exclude_unset=True))
            except openai.APIStatusError as error:
                status = error.status_code
                last_error = f"HTTP {status} from {self._url}: {error.response.text[:MAX_ERROR_BODY]}"
                if status not in RETRY_STATUSES:
                    raise ChatRequestError(last_error, attempts=attempt, status=status) from error
            except openai.APIConnectionError as error:  # APITimeoutError included
                last_error = f"cannot reach {self._url}: {error.__cause__ or error}"
            except (ValueError, IndexError, TypeError, AttributeError) as error:  # JSONDecodeError: a ValueError
                last_error = f"unusable reply from {self._url}: {type(error).__name__}: {error}"
            if attempt < self.max_attempts:
                delay = self._delay(attempt)
                logger.debug("attempt %d/%d failed (%s); retrying in %.2fs", attempt, self.max_attempts,
                             last_error, delay)
                if delay > 0:
                    self.sleep(delay)
        raise ChatRequestError(f"gave up after {self.max_attempts} attempt(s): {last_error}",
                               attempts=self.max_attempts, status=status)
