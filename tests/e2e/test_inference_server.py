"""The inference role over HTTP with real trained adapters: streaming through the openai client,
disconnects, load failures, deletion, metrics, and the api role proxying to a separate inference role."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from ftserve.core.config import Settings
from tests.inference_adapters import ANIMALS, BASE, COLORS, SOUNDS, prompt, register, train_adapter
from tests.servers import FTSERVE, Proc, Service, base_env, free_port, wait_http

# The adapters are trained in-process straight into the server's data dir.
pytestmark = pytest.mark.local_storage


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    """`ftserve api --with-inference` on a data dir holding two trained adapters, registered once it runs."""
    data = tmp_path_factory.mktemp("inference")
    settings = Settings(data_dir=data, bases_dir=bases_dir)
    train_adapter(settings, "ftjob-sounds", SOUNDS, seed=1)
    train_adapter(settings, "ftjob-colors", COLORS, seed=2)
    port = free_port()
    env = base_env(data, bases_dir, FTSERVE_BATCH_WINDOW_MS="50")
    proc = Proc([*FTSERVE, "api", "--with-inference", "--port", str(port)], env, data / "server.log")
    service = Service(f"http://127.0.0.1:{port}", [proc], env)
    try:
        wait_http(f"{service.base_url}/health", [proc])
        # Registered after the server started: a new model is servable at once, no restart or reload.
        service.sounds = register(settings, "ftjob-sounds", "sounds")  # type: ignore[attr-defined]
        service.colors = register(settings, "ftjob-colors", "colors")  # type: ignore[attr-defined]
        service.settings = settings  # type: ignore[attr-defined]
        yield service
    finally:
        service.stop()


def _client(service: Service) -> OpenAI:
    return OpenAI(base_url=f"{service.base_url}/v1", api_key="anything", max_retries=0, timeout=120)


def _metrics(service: Service) -> dict[str, float]:
    text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    return {
        s.name + ("" if not s.labels else str(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_adapters_answer_over_http(server: Service) -> None:
    client = _client(server)
    for model, mapping in ((server.sounds, SOUNDS), (server.colors, COLORS)):  # type: ignore[attr-defined]
        replies = [
            client.completions.create(model=model, prompt=prompt(a), max_tokens=8, temperature=0) for a in ANIMALS
        ]
        assert [r.choices[0].text for r in replies] == [f" {mapping[a]}" for a in ANIMALS]


def test_streaming_completions_and_chat(server: Service) -> None:
    client = _client(server)
    for model in (server.sounds, BASE):  # type: ignore[attr-defined]
        whole = client.completions.create(model=model, prompt=prompt("dog"), max_tokens=20, temperature=0)
        stream = client.completions.create(model=model, prompt=prompt("dog"), max_tokens=20, temperature=0, stream=True)
        chunks = list(stream)
        texts = [c.choices[0].text for c in chunks if c.choices]
        assert "".join(texts) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len([t for t in texts if t]) > 1  # the base model's 20 tokens arrive as they are produced

    messages = [{"role": "user", "content": "What does the cat say?"}]
    whole_chat = client.chat.completions.create(model=BASE, messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    deltas = []
    for chunk in client.chat.completions.create(
        model=BASE,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
        else:
            assert chunk.usage is not None and chunk.usage.completion_tokens == whole_chat.usage.completion_tokens
    assert "".join(deltas) == whole_chat.choices[0].message.content


def test_responses_sdk_round_trips_on_a_fine_tuned_model(server: Service) -> None:
    """The Responses API on an ft: model through the official client: create with item input (greedy, the chat
    reply's text on the same model, not the base's), parse with a json_schema, the stream helper's parsed result
    equal to the whole reply's, and a function-tool round trip through previous_response_id."""
    from tests.e2e.test_responses import TOOL, Ticket

    client, model = _client(server), server.colors  # type: ignore[attr-defined]
    text = prompt("cow")
    items = [{"role": "user", "content": [{"type": "input_text", "text": text}]}]
    r = client.responses.create(model=model, input=items, max_output_tokens=8, temperature=0)  # type: ignore[arg-type]
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0
    )
    base = client.responses.create(model=BASE, input=text, max_output_tokens=8, temperature=0)
    assert r.model == model and r.output_text == (chat.choices[0].message.content or "")
    assert r.usage and chat.usage and r.usage.output_tokens == chat.usage.completion_tokens
    assert (r.output_text, r.status) != (base.output_text, base.status), "the adapter must change the reply"

    parsed = client.responses.parse(
        model=model, input="A ticket", text_format=Ticket, max_output_tokens=80, temperature=0
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Ticket)
    with client.responses.stream(
        model=model, input="A ticket", text_format=Ticket, max_output_tokens=80, temperature=0
    ) as s:
        kinds = [e.type for e in s]
        streamed = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert streamed.output_parsed == parsed.output_parsed and streamed.model == model

    # As on the base (test_responses.test_function_tool_round_trip): room for the tiny model's spelled-out call.
    ask = {"input": "Weather in Oslo?", "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 160}
    first = client.responses.create(model=model, temperature=0, **ask)  # type: ignore[arg-type]
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Oslo", "Lima")
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 3}'}],
        tools=[TOOL],
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    assert second.usage and first.usage and second.usage.input_tokens > first.usage.input_tokens


def test_client_disconnect_stops_generation(server: Service) -> None:
    body = {"model": BASE, "prompt": "The quick brown fox", "max_tokens": 450, "temperature": 0}
    full = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).json()
    assert full["choices"][0]["finish_reason"] == "length"  # left alone, this row runs 450 tokens
    before = _metrics(server)
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        data_lines = 0
        for line in r.iter_lines():
            data_lines += line.startswith("data:")
            if data_lines == 2:
                break
    cancelled = "ftserve_inference_rows_finished_total[('reason', 'cancelled')]"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _metrics(server)
        if after.get(cancelled, 0) > before.get(cancelled, 0):
            break
        time.sleep(0.1)
    assert after.get(cancelled, 0) == before.get(cancelled, 0) + 1
    generated = after["ftserve_inference_generated_tokens_total"] - before["ftserve_inference_generated_tokens_total"]
    assert generated < 450
    assert after["ftserve_inference_active_rows"] == 0


def test_metrics_are_exposed(server: Service) -> None:
    _client(server).completions.create(model=server.colors, prompt=prompt("cat"), max_tokens=4, temperature=0)  # type: ignore[attr-defined]
    m = _metrics(server)
    assert m["ftserve_adapter_cache_hits_total"] >= 1 and m["ftserve_adapter_loads_total"] >= 2
    assert m["ftserve_inference_queue_seconds_count"] >= 1 and m["ftserve_inference_batch_rows_count"] >= 1
    assert m["ftserve_inference_requests_total[('endpoint', 'completions'), ('status', '200')]"] >= 1
    assert "ftserve_inference_tokens_per_second" in m


def test_corrupt_adapter_fails_only_its_requests(server: Service) -> None:
    settings: Settings = server.settings  # type: ignore[attr-defined]
    jobs = settings.resolved_data_dir() / "jobs"
    shutil.copytree(jobs / "ftjob-sounds", jobs / "ftjob-broken")
    (jobs / "ftjob-broken" / "final" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    broken = register(settings, "ftjob-broken", "broken")
    client = _client(server)

    def ask(model: str) -> str:
        return client.completions.create(model=model, prompt=prompt("cow"), max_tokens=8, temperature=0).choices[0].text

    with ThreadPoolExecutor(6) as pool:
        bad = [pool.submit(ask, broken) for _ in range(3)]
        good = [pool.submit(ask, server.colors) for _ in range(3)]  # type: ignore[attr-defined]
        assert [f.result() for f in good] == [" blue"] * 3
        for f in bad:
            with pytest.raises(openai.InternalServerError) as err:
                f.result()
            assert err.value.code == "adapter_load_failed" and broken in err.value.message
    # Streaming requests get the same error as an HTTP status, before any chunk.
    with pytest.raises(openai.InternalServerError):
        list(client.completions.create(model=broken, prompt="x", max_tokens=4, stream=True))


def test_delete_unloads_and_new_checkpoint_serves(server: Service) -> None:
    settings: Settings = server.settings  # type: ignore[attr-defined]
    jobs = settings.resolved_data_dir() / "jobs"
    shutil.copytree(jobs / "ftjob-colors" / "final", jobs / "ftjob-colors" / "ckpt-step-5")
    ckpt = register(settings, "ftjob-colors", "colors", step=5)
    client = _client(server)
    assert client.completions.create(model=ckpt, prompt=prompt("cow"), max_tokens=8, temperature=0).choices[0].text == (
        " blue"
    )
    before = _metrics(server)
    client.models.delete(ckpt)
    assert _metrics(server)["ftserve_adapter_unloads_total"] == before.get("ftserve_adapter_unloads_total", 0) + 1
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=ckpt, prompt=prompt("cow"), max_tokens=8)


def test_api_role_proxies_to_inference_role(server: Service) -> None:
    data = server.settings.resolved_data_dir()  # type: ignore[attr-defined]
    env = dict(server.env)
    inf_port, api_port = free_port(), free_port()
    inf_env = {**env, "FTSERVE_ADAPTER_SWEEP_SECONDS": "0.2"}
    inference = Proc([*FTSERVE, "inference", "--port", str(inf_port)], inf_env, data / "inference.log")
    api_env = {**env, "FTSERVE_INFERENCE_URL": f"http://127.0.0.1:{inf_port}"}
    api = Proc([*FTSERVE, "api", "--port", str(api_port)], api_env, data / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{inf_port}/health", [inference])
        wait_http(f"http://127.0.0.1:{api_port}/health", [api])
        assert httpx.get(f"http://127.0.0.1:{api_port}/health").json()["roles"] == ["api"]
        client = _client(Service(f"http://127.0.0.1:{api_port}", [], env))
        reply = client.completions.create(model=server.sounds, prompt=prompt("lion"), max_tokens=8, temperature=0)  # type: ignore[attr-defined]
        assert reply.choices[0].text == " roar"
        stream = client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        assert len(list(stream)) >= 2
        with pytest.raises(openai.NotFoundError) as err:  # errors pass through in the same envelope
            client.completions.create(model="ft:nope", prompt="x")
        assert err.value.code == "model_not_found"
        # The Responses API through the api role, on a fine-tuned model: create, stream, retrieve, input_items,
        # delete (the stored response's GET and DELETE routes are forwarded too).
        sounds = server.sounds  # type: ignore[attr-defined]
        r = client.responses.create(model=sounds, input="hi", max_output_tokens=4, temperature=0)
        assert client.responses.retrieve(r.id).output_text == r.output_text
        assert len(client.responses.input_items.list(r.id).data) == 1
        events = client.responses.create(model=sounds, input="hi", max_output_tokens=4, temperature=0, stream=True)
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
        client.responses.delete(r.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(r.id)

        # A model deleted through the api role leaves the inference process's memory too.
        jobs = data / "jobs"
        shutil.copytree(jobs / "ftjob-sounds" / "final", jobs / "ftjob-sounds" / "ckpt-step-7", dirs_exist_ok=True)
        ckpt = register(server.settings, "ftjob-sounds", "sounds", step=7)  # type: ignore[attr-defined]
        client.completions.create(model=ckpt, prompt=prompt("lion"), max_tokens=2, temperature=0)
        inf = Service(f"http://127.0.0.1:{inf_port}", [], env)
        before = _metrics(inf)
        client.models.delete(ckpt)
        deadline = time.monotonic() + 30
        while _metrics(inf).get("ftserve_adapter_unloads_total", 0) == before.get("ftserve_adapter_unloads_total", 0):
            assert time.monotonic() < deadline, "the deleted checkpoint's adapter stayed resident"
            time.sleep(0.2)
        assert _metrics(inf)["ftserve_adapters_resident"] == before["ftserve_adapters_resident"] - 1
        reply = client.completions.create(model=server.sounds, prompt=prompt("lion"), max_tokens=8, temperature=0)  # type: ignore[attr-defined]
        assert reply.choices[0].text == " roar"  # the final model of the same job stays
    finally:
        api.stop()
        inference.stop()
