"""ChatClient against a recorded-reply server on 127.0.0.1: attempt budget, retried statuses, error
messages, headers and proxies (real HTTP through the openai package, no mocks)."""

import socket

import pytest
from exgramed_llm_fakes import RecordedServer

from exgramed_plugin.common.openai_client import RETRY_STATUSES, ChatClient, ChatRequestError, chat_completions_url

MESSAGES = [{"role": "user", "content": "Hi"}]


def _client(server, **kwargs):
    kwargs.setdefault("backoff_base", 0.0)
    return ChatClient(base_url=server.base_url, model="m", timeout=10, **kwargs)


def test_reply_text_attempts_and_request_body():
    with RecordedServer(lambda request: (200, "Hello.")) as server:
        reply = _client(server).chat(MESSAGES, temperature=0.0, max_tokens=7)
        unset = _client(server).chat(MESSAGES)
    assert (reply.content, reply.attempts, reply.finish_reason) == ("Hello.", 1, "stop")
    assert reply.raw["choices"][0]["message"]["content"] == "Hello."
    assert server.requests[0] == {"model": "m", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 7}
    assert server.requests[1] == {"model": "m", "messages": MESSAGES}  # None = the server's defaults
    assert unset.content == "Hello."


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_retryable_statuses_are_retried_within_the_budget(status):
    calls = []

    def flaky(request):
        calls.append(1)
        return (status, "busy") if len(calls) < 3 else (200, "at last")

    with RecordedServer(flaky) as server:
        reply = _client(server, max_attempts=3).chat(MESSAGES)
    assert reply.content == "at last" and reply.attempts == 3 and len(server.requests) == 3


def test_exhausted_budget_names_url_status_and_body():
    with RecordedServer(lambda request: (503, "overloaded now")) as server:
        client = _client(server, max_attempts=2)
        with pytest.raises(ChatRequestError) as caught:
            client.chat(MESSAGES)
    error = caught.value
    assert error.attempts == 2 and error.status == 503 and len(server.requests) == 2
    assert str(error).startswith("gave up after 2 attempt(s): HTTP 503 from ")
    assert client.url in str(error) and "overloaded now" in str(error)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_not_retried(status):
    with RecordedServer(lambda request: (status, "bad request")) as server:
        client = _client(server, max_attempts=5)
        with pytest.raises(ChatRequestError) as caught:
            client.chat(MESSAGES)
    assert caught.value.attempts == 1 and caught.value.status == status and len(server.requests) == 1
    assert str(caught.value).startswith(f"HTTP {status} from {client.url}: ") and "bad request" in str(caught.value)


def test_long_error_bodies_are_cut():
    with RecordedServer(lambda request: (400, b"x" * 5000)) as server:
        with pytest.raises(ChatRequestError) as caught:
            _client(server).chat(MESSAGES)
    assert str(caught.value).count("x") == 500


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"id": "x"}', b'{"choices": []}',
                                  b'{"choices": [{"message": {"content": null}}]}', b'{"choices": [1]}'])
def test_unusable_replies_are_retried_then_reported(body):
    with RecordedServer(lambda request: (200, body)) as server:
        client = _client(server, max_attempts=2)
        with pytest.raises(ChatRequestError) as caught:
            client.chat(MESSAGES)
    assert caught.value.attempts == 2 and caught.value.status is None and len(server.requests) == 2
    assert f"unusable reply from {client.url}: " in str(caught.value)


def test_unreachable_server_is_reported_after_the_budget():
    with socket.socket() as sock:  # a free loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient(base_url=f"http://127.0.0.1:{port}", model="m", max_attempts=2, backoff_base=0.0, timeout=2)
    with pytest.raises(ChatRequestError) as caught:
        client.chat(MESSAGES)
    assert caught.value.attempts == 2 and caught.value.status is None
    assert f"cannot reach http://127.0.0.1:{port}/v1/chat/completions: " in str(caught.value)


def test_timeouts_are_retried():
    with RecordedServer(lambda request: (200, "late"), delay=1.0) as server:
        client = ChatClient(base_url=server.base_url, model="m", max_attempts=2, backoff_base=0.0, timeout=0.2)
        with pytest.raises(ChatRequestError) as caught:
            client.chat(MESSAGES)
    assert caught.value.attempts == 2 and "cannot reach" in str(caught.value)


def test_backoff_doubles_with_a_seeded_jitter_and_is_capped():
    slept = []
    with RecordedServer(lambda request: (429, "slow down")) as server:
        client = _client(server, max_attempts=5, backoff_base=1.0, backoff_max=3.0, seed=7, sleep=slept.append)
        with pytest.raises(ChatRequestError):
            client.chat(MESSAGES)
    assert len(slept) == 4  # between the 5 attempts, none after the last
    for delay, nominal in zip(slept, (1.0, 2.0, 3.0, 3.0), strict=True):
        assert 0.5 * nominal <= delay <= nominal
    again = []
    with RecordedServer(lambda request: (429, "slow down")) as server:
        with pytest.raises(ChatRequestError):
            _client(server, max_attempts=5, backoff_base=1.0, backoff_max=3.0, seed=7,
                    sleep=again.append).chat(MESSAGES)
    assert again == slept


def test_api_key_header_and_none_sends_no_header_even_with_openai_api_key_set(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    with RecordedServer(lambda request: (200, "ok")) as server:
        _client(server, api_key="secret").chat(MESSAGES)
        _client(server).chat(MESSAGES)
    assert server.headers[0].get("Authorization") == "Bearer secret"
    assert server.headers[1].get("Authorization") is None


def test_loopback_servers_bypass_the_environment_proxy(monkeypatch):
    with socket.socket() as sock:  # a "proxy" nobody listens on: any request sent there fails
        sock.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with RecordedServer(lambda request: (200, "direct")) as server:
        assert _client(server, max_attempts=1).chat(MESSAGES).content == "direct"
        localhost = ChatClient(base_url=server.base_url.replace("127.0.0.1", "localhost"), model="m",
                               max_attempts=1, backoff_base=0.0, timeout=10)
        assert localhost.chat(MESSAGES).content == "direct"


@pytest.mark.parametrize("given, expected", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"), ("http://h:8000/", "http://h:8000/v1/chat/completions"),
    ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions"),
    ("http://h/v1/chat/completions/", "http://h/v1/chat/completions")])
def test_base_urls_as_users_paste_them(given, expected):
    assert chat_completions_url(given) == expected
    assert ChatClient(base_url=given, model="m").url == expected


@pytest.mark.parametrize("bad", ["ftp://h/v1", "localhost:8000", ""])
def test_bad_base_urls_and_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="not an http"):
        ChatClient(base_url=bad, model="m")
    with pytest.raises(ValueError, match="max_attempts"):
        ChatClient(base_url="http://h", model="m", max_attempts=0)
