"""ScriptedModelServer over real HTTP: streaming and plain answers, turn selection, errors, stats."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from beads_runner.scripted_model import ScriptedModelServer, ScriptError

WRITE = {"name": "write", "args": {"filePath": "hello.py", "content": "print('hi')\n"}}
SCRIPT = {
    "scenarios": [
        {"match": "demo-1", "rounds": [
            [{"text": "Writing hello.py", "tools": [WRITE]}, {"text": "Added hello.py."}],
            [{"text": "Fixing.", "tools": [{"name": "bash", "args": {"command": "ls"}}]}, {"text": "Fixed."}],
        ]},
        {"match": "boom", "error": {"status": 500, "message": "scripted boom", "retry_after_ms": 20}},
        {"match": "flaky", "times": 2, "error": {"status": 503}, "rounds": [[{"text": "recovered"}]]},
        {"match": "slow", "delay": 0.4, "rounds": [[{"text": "slowly"}]]},
        {"match": "silence", "hang": True},
    ],
    "fallback": {"text": "nothing matched"},
}
SYSTEM = {"role": "system", "content": "You are opencode.\n<env>\n  Working directory: /tmp/wt-1\n</env>"}


def _messages(first: str, *rest: dict) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": [{"type": "text", "text": first}]}, *rest]


def _assistant(text="x", tools=False) -> dict:
    message = {"role": "assistant", "content": text}
    if tools:
        message["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": "write", "arguments": "{}"}}]
    return message


TOOL_RESULT = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
TOOLS = [{"type": "function", "function": {"name": "write", "parameters": {}}}]


def _post(server, messages, *, stream=False, tools=True, timeout=10):
    body = {"model": "scripted", "messages": messages, "stream": stream}
    if tools:
        body["tools"] = TOOLS
    request = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read().decode()
        if not stream:
            return json.loads(raw)
        assert response.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in raw.split("\n\n") if line.strip()]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def _fold_stream(chunks):
    """(text, tool calls, finish_reason, usage) from streamed chunks, as an SDK would assemble them."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return text, [calls[i] for i in sorted(calls)], finish, usage


@pytest.fixture
def server():
    with ScriptedModelServer(SCRIPT) as srv:
        yield srv


def test_url_and_models(server):
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
    with urllib.request.urlopen(server.url + "/models", timeout=5) as response:
        data = json.loads(response.read())
    assert [m["id"] for m in data["data"]] == ["scripted"]


def test_stream_first_turn_is_a_tool_call_with_absolute_path(server):
    text, calls, finish, usage = _fold_stream(_post(server, _messages("Work on demo-1: hello"), stream=True))
    assert text == "Writing hello.py"
    assert finish == "tool_calls"
    assert len(calls) == 1 and calls[0]["name"] == "write" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"filePath": "/tmp/wt-1/hello.py", "content": "print('hi')\n"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_non_stream_answers(server):
    body = _post(server, _messages("Work on demo-1: hello"))
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"]["name"] == "write"
    assert body["usage"]["completion_tokens"] > 0
    second = _post(server, _messages("Work on demo-1: hello", _assistant(tools=True), TOOL_RESULT))
    assert second["choices"][0] == {"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "Added hello.py."}}


def test_rounds_and_turns_follow_the_history(server):
    first = "Work on demo-1: hello"
    done_round_1 = [_assistant(tools=True), TOOL_RESULT, _assistant("Added hello.py.")]
    # round 2 starts with the second user message
    r2 = _messages(first, *done_round_1, {"role": "user", "content": "now fix it"})
    text, calls, finish, _ = _fold_stream(_post(server, r2, stream=True))
    assert (text, finish, calls[0]["name"]) == ("Fixing.", "tool_calls", "bash")
    assert json.loads(calls[0]["arguments"]) == {"command": "ls"}
    r2_turn2 = r2 + [_assistant(tools=True), TOOL_RESULT]
    assert _fold_stream(_post(server, r2_turn2, stream=True))[:3] == ("Fixed.", [], "stop")
    # past the last turn, and past the last round: the last text again, with "stop"
    assert _fold_stream(_post(server, r2_turn2 + [_assistant(), _assistant()], stream=True))[:3] == (
        "Fixed.", [], "stop")
    r3 = r2_turn2 + [_assistant("Fixed."), {"role": "user", "content": "and again"}]
    assert _fold_stream(_post(server, r3, stream=True))[:3] == ("Fixed.", [], "stop")
    # a request offering no tools (a title request) never gets a tool call
    assert _post(server, _messages(first), tools=False)["choices"][0]["finish_reason"] == "stop"


def test_fallback_and_scenario_counts(server):
    body = _post(server, _messages("something else entirely"))
    assert body["choices"][0]["message"]["content"] == "nothing matched"
    _post(server, _messages("demo-1 again"))
    stats = server.stats()
    assert stats["scenarios"] == {"fallback": 1, "demo-1": 1}
    assert stats["requests"] == 2 and stats["in_flight"] == 0


def test_error_scenario(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(server, _messages("boom please"))
    assert err.value.code == 500
    assert err.value.headers["retry-after-ms"] == "20"
    assert json.loads(err.value.read())["error"]["message"] == "scripted boom"
    with pytest.raises(urllib.error.HTTPError):
        _post(server, _messages("boom please"), stream=True)
    assert server.stats()["errors_served"] == 2


def test_times_fails_then_follows_rounds(server):
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(server, _messages("flaky thing"))
        assert err.value.code == 503
    assert _post(server, _messages("flaky thing"))["choices"][0]["message"]["content"] == "recovered"
    assert server.stats()["scenarios"]["flaky"] == 3


def test_delay_is_applied_to_each_answer(server):
    results = []

    def call():
        results.append(_post(server, _messages("slow one"))["choices"][0]["message"]["content"])

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["slowly"] * 3
    assert time.monotonic() - started >= 0.4  # a lower bound: sleeping never takes less
    assert server.stats()["in_flight"] == 0


def test_in_flight_counts_requests_held_side_by_side():
    # Requests that hang stay in flight until stop(), so all three are held at once whatever the
    # machine's load: the count is exact, not a race against the delay.
    srv = ScriptedModelServer(SCRIPT).start()
    threads = [threading.Thread(target=_post_ignoring_errors, args=(srv, _messages("silence"))) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while srv.stats()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.stats()["in_flight"] == 3
        assert srv.stats()["max_in_flight"] == 3
    finally:
        srv.stop()
        for t in threads:
            t.join(30)
    assert srv.stats()["in_flight"] == 0


def _post_ignoring_errors(srv, messages):
    try:
        _post(srv, messages, timeout=60)
    except Exception:  # noqa: BLE001 - the connection is closed on stop
        pass


def test_hang_never_answers_until_stop():
    srv = ScriptedModelServer(SCRIPT).start()
    errors = []

    def call():
        try:
            _post(srv, _messages("silence"), timeout=30)
        except Exception as exc:  # the connection is closed on stop
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 30  # until the server holds the request (not a guess at how long that takes)
    while srv.stats()["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.stats()["in_flight"] == 1
    assert thread.is_alive() and not errors  # held, not answered
    stop_started = time.monotonic()
    srv.stop()
    thread.join(30)
    assert not thread.is_alive() and errors
    assert time.monotonic() - stop_started < 15  # released by stop(), not by the client's 30 s timeout


def test_opencode_config_and_env(server):
    config = server.opencode_config()
    provider = config["provider"]["scripted"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == server.url and provider["options"]["apiKey"] == "x"
    assert provider["options"]["timeout"] > 0
    assert config["model"] == "scripted/scripted"
    env = server.opencode_env()
    assert json.loads(env["OPENCODE_CONFIG_CONTENT"]) == config
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1"
    assert json.loads(env["OPENCODE_PERMISSION"])["edit"] == "allow"


def test_script_from_file_and_validation(tmp_path):
    path = tmp_path / "script.json"
    path.write_text(json.dumps(SCRIPT))
    with ScriptedModelServer(path) as srv:
        assert _post(srv, _messages("demo-1"))["choices"][0]["finish_reason"] == "tool_calls"
    with pytest.raises(ScriptError):
        ScriptedModelServer({"scenarios": [{"rounds": []}]})
    with pytest.raises(ScriptError):
        ScriptedModelServer({"scenarios": [{"match": "x", "rounds": [[{"tools": [{"args": {}}]}]]}]})


def test_cli_serves_until_sigterm(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "beads_runner.scripted_model", "--script", str(script),
                             "--port-file", str(port_file)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert port_file.read_text().strip() == url.rsplit(":", 1)[1].removesuffix("/v1")
        with urllib.request.urlopen(url + "/models", timeout=5) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_an_outage_answers_every_request_with_its_error_for_its_seconds_then_ends(tmp_path):
    log = tmp_path / "answers.ndjson"
    script = {"outage": {"status": 429, "message": "You exceeded your current quota", "code": "insufficient_quota",
                         "type": "insufficient_quota", "seconds": 0.5},
              "scenarios": [{"match": "demo-1", "rounds": [[{"text": "Back."}]]}]}
    with ScriptedModelServer(script, answer_log=log) as srv:
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(srv, _messages("demo-1 please"))
        assert err.value.code == 429 and "retry-after" not in {k.lower() for k in err.value.headers}
        body = json.loads(err.value.read())
        assert body["error"]["code"] == "insufficient_quota"
        time.sleep(0.6)
        _post(srv, _messages("demo-1 please"))  # the outage is over
        assert [a["status"] for a in srv.answers] == [429, 200]
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == [429, 200]
    with pytest.raises(ScriptError):
        ScriptedModelServer({"outage": {"status": 429}})
