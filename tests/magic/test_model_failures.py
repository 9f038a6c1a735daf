"""A model's own failure does not open its provider's circuit (issue 20).

One loopback provider serves model ``good``; asked for any other model it says so, in the
words and with the status real servers use (vLLM's 404, llama-server's 400, Ollama's words
with a 500, an in-stream error event, a context-size error). Side by side over several
such models, more times than the breaker's threshold: each column says why its model
failed, nothing is retried, the circuit stays closed, and the next cell on ``good``
answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.magic.conftest import WriteProviders, local
from tests.magic.conftest import run_shown as run
from tests.support.faultserver import FaultServer, Params, RecordedRequest, Responder

GOOD = "good"
BAD = ("b1", "b2", "b3")
THRESHOLD = 2


def _error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


class ModelServer(FaultServer):
    """A FaultServer whose chat endpoint, given ``say`` in the URL, serves only model
    ``good`` (as the scenario says): any other model gets what ``say`` names."""

    async def _dispatch(self, out: Responder, rec: RecordedRequest, params: Params) -> None:
        body = rec.json if isinstance(rec.json, dict) else {}
        model = str(body.get("model", ""))
        say = params.get("say")
        if say is None or model == GOOD or rec.method != "POST" \
                or not rec.path.endswith("chat/completions"):
            await super()._dispatch(out, rec, params)
            return
        if say == "404":  # vLLM, OpenAI
            await out.send_json(404, _error(f"The model `{model}` does not exist.",
                                            "NotFoundError"))
        elif say == "400":  # llama-server serving several models
            await out.send_json(400, _error("model not found"))
        elif say == "500":  # Ollama's words, with a 5xx
            await out.send_json(500, {"error": f'model "{model}" not found, try pulling '
                                               "it first"})
        elif say == "event":  # an error event in a 200 stream, before any token
            await out.start_chunked(200, "text/event-stream")
            err = _error(f"The model `{model}` does not exist.", "NotFoundError")
            await out.chunk(f"data: {json.dumps(err)}\n\n".encode())
            await out.chunk(b"data: [DONE]\n\n")
            await out.end_chunked()
        elif say == "context":  # llama-server: a model whose context is too small
            await out.send_json(500, _error("the request exceeds the available context "
                                            "size, try increasing it",
                                            "exceed_context_size_error"))
        else:
            raise AssertionError(f"say={say}?")


WHY = {"404": "does not exist", "400": "model not found", "500": "not found, try pulling",
       "event": "does not exist", "context": "exceeds the available context size"}


@pytest.fixture(scope="module")
def models_srv() -> Any:
    with ModelServer(cap=20) as srv:
        yield srv


@pytest.mark.parametrize("say", list(WHY))
def test_failing_models_side_by_side_leave_the_provider_open_for_the_next_cell(
        shell: InteractiveShell, models_srv: ModelServer, write_providers: WriteProviders,
        say: str) -> None:
    import timmy_magic

    write_providers(
        [local("one", models_srv.base_url("ok", say=say, model=GOOD, text="a good answer"),
               models=[{"name": GOOD}])],
        cascade={"max_retries_per_provider": 2,
                 "circuit_breaker": {"failure_threshold": THRESHOLD,
                                     "recovery_timeout": 600}})
    run(shell, "%load_ext timmy_magic")
    router = timmy_magic.get_router()
    models_srv.reset()
    rounds = THRESHOLD + 1  # 3 failing models a round: far more failures than the threshold
    for _ in range(rounds):
        res, shown = run(shell, f"%%llm -p one -m {','.join(BAD)} -o cmp\nhello")
        assert res.error_in_exec is None, shown
        cmp = shell.user_ns["cmp"]
        assert cmp.labels == list(BAD)
        for model in BAD:
            result = cmp[model]
            assert not result.ok and WHY[say] in (result.error or ""), (model, result)
            # the route trace says which provider failed and why, in the server's words
            lines = result.trace.lines()
            assert lines[0] == "considered: one  [pinned: one]", lines
            assert lines[1].startswith("one#1 failed: ") and WHY[say] in lines[1], lines
            assert len(result.trace.attempts) == 1, lines  # not retried: it cannot mend
            assert WHY[say] in shown
        assert router.health()["one"].circuit == "closed"
    asked = [r.json.get("model") for r in models_srv.requests
             if r.path.endswith("chat/completions")]
    assert sorted(asked) == sorted(BAD * rounds)  # each model asked once a round
    breaker = router.provider("one").endpoints[0].breaker
    assert breaker.consecutive_failures == 0 and breaker.times_opened == 0

    res, shown = run(shell, f"%%llm -p one -m {GOOD}\nhello")
    assert res.error_in_exec is None and "a good answer" in shown, shown
    assert "circuit open" not in shown
    res, shown = run(shell, f"%%llm -m {GOOD}\nhello again")  # and unpinned
    assert res.error_in_exec is None and "a good answer" in shown, shown


def test_the_providers_own_failures_still_open_its_circuit(
        shell: InteractiveShell, models_srv: ModelServer,
        write_providers: WriteProviders) -> None:
    """The other side: a server that fails every model (HTTP 503) is the endpoint's
    failure; past the threshold the circuit opens and the next cell is told so."""
    import timmy_magic

    write_providers(
        [local("one", models_srv.base_url("status", code=503))],
        cascade={"circuit_breaker": {"failure_threshold": THRESHOLD,
                                     "recovery_timeout": 600}})
    run(shell, "%load_ext timmy_magic")
    res, shown = run(shell, f"%%llm -p one -m {','.join(BAD)}\nhello")
    assert res.error_in_exec is None and "503" in shown, shown
    assert timmy_magic.get_router().health()["one"].circuit == "open"
    res, shown = run(shell, f"%%llm -p one -m {GOOD}\nhello")
    assert "circuit open" in shown, shown
