"""What a provider is sent for a request once the defaults of providers.yaml apply.

The request's model, else the provider's default model; the request's ``max_tokens``,
else the model's, else ``cascade.default_max_tokens``; the request's ``temperature``,
else the model's. One owner: the attempt sends what this says (``routing/attempt.py``)
and the answer cache keys on it (``cache/keys.py``), so a changed providers.yaml changes
both together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from timmy_magic.config import CascadeConfig, ModelConfig, ProviderConfig
    from timmy_magic.model.chat import ChatRequest


class Sent(NamedTuple):
    """The settings one provider is sent (a tuple: this runs on every attempt)."""

    model: str | None
    settings: ModelConfig | None
    """The model's entry in providers.yaml (None: the model is not listed there)."""
    max_tokens: int | None
    temperature: float | None


def with_defaults(req: ChatRequest, provider: ProviderConfig,
                  cascade: CascadeConfig) -> Sent:
    """What ``provider`` is sent for ``req``: its values, else the defaults."""
    model = req.model or provider.default_model
    listed = provider.model(model)
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = (listed.max_tokens if listed is not None else None) \
            or cascade.default_max_tokens
    temperature = req.temperature
    if temperature is None and listed is not None:
        temperature = listed.temperature
    return Sent(model, listed, max_tokens, temperature)
