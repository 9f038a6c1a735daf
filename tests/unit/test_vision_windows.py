"""Issue 13, router side, pure parts: message content made of parts (one check), what a
request says about itself (needs vision, estimated tokens), each dialect's serialisation,
cache keys over images, and the planner's two new skip reasons."""

from __future__ import annotations

import base64

import pytest

from timmy_magic.cache import RequestFields, request_key, request_summary
from timmy_magic.model.chat import ChatRequest, ImagePart, Message, Skip, TextPart
from timmy_magic.model.errors import InvalidRequest
from timmy_magic.model.tokens import image_tokens
from timmy_magic.providers.parts import anthropic_content, ollama_message, openai_content
from timmy_magic.routing.planner import ProviderView, plan_route

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
                       "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
IMG = ImagePart.of(PNG, "image/png", 300, 250)


def v(name: str, prio: int, **kw: object) -> ProviderView:
    base: dict[str, object] = dict(enabled=True, is_cloud=False, state="healthy",
                                   circuit_available=True)
    base.update(kw)
    return ProviderView(name, prio, **base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ content


def test_parts_are_typed_and_checked_in_one_place() -> None:
    m = Message("user", [{"type": "text", "text": "look: "},
                         {"type": "image_url", "image_url": {"url": IMG.data_url}}])
    assert m.content == (TextPart("look: "), ImagePart(IMG.data, "image/png"))
    assert m.text == "look: " and m.images[0].mime == "image/png"
    # Anthropic's block and plain strings are taken too; all-text parts become a string
    a = Message("user", ["x", {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": IMG.data}}])
    assert a.images and a.text == "x"
    assert Message("user", [TextPart("a"), {"type": "text", "text": "b"}]).content == "ab"
    assert Message("user", "plain").content == "plain"


@pytest.mark.parametrize("content,match", [
    ([], "empty list"),
    (42, "text or a list"),
    ([{"type": "audio", "data": "x"}], "unknown content part type 'audio'"),
    ([{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}], "base64 data URL"),
    ([ImagePart("not base64!!", "image/png")], "not valid base64"),
    ([ImagePart(base64.b64encode(b"x").decode(), "image/tiff")], "image/tiff"),
    ([ImagePart("", "image/png")], "no data"),
    ([object()], "not object"),
])
def test_bad_content_is_a_clear_invalid_request(content: object, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        Message("user", content)  # type: ignore[arg-type]


def test_images_only_in_user_messages() -> None:
    with pytest.raises(InvalidRequest, match="user messages only, not in a system"):
        Message("system", [TextPart("s"), IMG])


def test_an_image_never_shows_its_bytes() -> None:
    assert IMG.data not in repr(Message("user", ("hi", IMG)))
    assert "image/png" in repr(IMG) and "300x250" in repr(IMG)


def test_the_request_says_what_planning_needs() -> None:
    text_only = ChatRequest((Message("system", "s" * 40), Message("user", "u" * 81)))
    assert not text_only.needs_vision and text_only.input_tokens == 10 + 21
    req = ChatRequest((Message("user", ("a" * 8, IMG)),))
    assert req.needs_vision
    assert req.input_tokens == 2 + image_tokens(300, 250) == 2 + 100
    assert ImagePart(IMG.data).tokens == 1000  # size unknown
    with pytest.raises(InvalidRequest, match="not valid Unicode"):
        ChatRequest((Message("user", ("\ud800", IMG)),))


def test_each_dialect_serialises_parts() -> None:
    m = Message("user", ("what is this?", IMG))
    assert openai_content(m) == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMG.data}"}}]
    assert anthropic_content(m) == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": IMG.data}}]
    assert ollama_message(m) == {"role": "user", "content": "what is this?",
                                 "images": [IMG.data]}
    plain = Message("user", "hi")
    assert openai_content(plain) == anthropic_content(plain) == "hi"
    assert ollama_message(plain) == {"role": "user", "content": "hi"}


def test_cache_keys_over_images() -> None:
    def key(*msgs: Message) -> str:
        return request_key(RequestFields.of(ChatRequest(msgs), model="m"))

    one = key(Message("user", ("q", IMG)))
    assert one == key(Message("user", ("q", ImagePart(IMG.data, "image/png"))))  # size aside
    assert one != key(Message("user", "q"))
    other = ImagePart.of(PNG + b"\0", "image/png")
    assert one != key(Message("user", ("q", other)))
    # the same request written as OpenAI dicts is the same key
    dicts = RequestFields([{"role": "user", "content": [
        {"type": "text", "text": "q"},
        {"type": "image_url", "image_url": {"url": IMG.data_url}}]}], model="m")
    assert request_key(dicts) == one
    summary = request_summary([Message("user", ("what is this?", IMG))])
    assert summary == "what is this? [image_url]" and IMG.data not in summary


# ------------------------------------------------------------------ planning


def test_a_request_with_an_image_skips_models_without_vision() -> None:
    views = [v("text", 1, model="gemma"), v("nomodel", 2),
             v("eyes", 3, model="llava", vision=True)]
    p = plan_route(views, needs_vision=True)
    assert p.order == ("eyes",)
    assert p.skipped == (Skip("text", "no_vision", "model gemma lacks capabilities: [vision]"),
                         Skip("nomodel", "no_vision",
                              "no model configured; lacks capabilities: [vision]"))
    assert str(p.skipped[0]) == \
        "text skipped (no vision: model gemma lacks capabilities: [vision])"
    assert plan_route(views).order == ("text", "nomodel", "eyes")  # no image: all of them


def test_pinned_to_a_provider_without_vision_is_skipped_with_the_reason() -> None:
    p = plan_route([v("text", 1, model="gemma"), v("eyes", 2, vision=True)], pin="text",
                   needs_vision=True)
    assert p.order == () and p.skipped_for("no_vision") == ["text"]


def test_a_request_too_big_for_a_window_skips_that_provider() -> None:
    views = [v("small", 1, window=4000, output_tokens=1024),
             v("big", 2, window=32768, output_tokens=1024), v("unknown", 3)]
    p = plan_route(views, input_tokens=4100)
    assert p.order == ("big", "unknown")
    assert p.skipped == (Skip("small", "context_window", "5.1k tokens > 4k"),)
    assert str(p.skipped[0]) == "small skipped (context window: 5.1k tokens > 4k)"
    # exactly full fits; one more token does not
    assert plan_route(views, input_tokens=4000 - 1024).order[0] == "small"
    assert plan_route(views, input_tokens=4000 - 1023).order[0] == "big"


def test_pinned_to_a_small_window_is_still_tried() -> None:
    """The caller cut the context to that window; the estimate is rough: the server
    decides."""
    p = plan_route([v("small", 1, window=2048, output_tokens=512)], pin="small",
                   input_tokens=9000)
    assert p.order == ("small",) and not p.skipped


def test_state_reasons_come_before_capability_reasons() -> None:
    p = plan_route([v("down", 1, state="down", detail="refused", window=10)],
                   needs_vision=True, input_tokens=100)
    assert [s.reason for s in p.skipped] == ["unhealthy"]
