"""The wire decoders: any bytes give a struct or a clear 4xx, never a crash."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbiter_asgi._codec import Decoder, RequestValidationError
from orbiter_asgi.exceptions import RequestError
from orbiter_asgi.models import ChatRequest, CreateSessionRequest, Message, UpdateSessionRequest

chat = Decoder(ChatRequest)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    input=st.text(),
    agent_name=st.none() | st.text(),
    session_id=st.none() | st.text(),
    stream=st.booleans(),
)
def test_valid_chat_requests_round_trip(
    input: str, agent_name: str | None, session_id: str | None, stream: bool
) -> None:
    request = ChatRequest(input=input, agent_name=agent_name, session_id=session_id, stream=stream)
    assert chat.decode(msgspec.json.encode(request)) == request


FIELDS = st.sampled_from(["input", "message", "agent_name", "session_id", "stream", "x"])


@settings(max_examples=300)
@given(body=st.dictionaries(FIELDS, json_values))
def test_any_json_object_decodes_or_names_the_bad_field(body: dict[str, object]) -> None:
    try:
        request = chat.decode(msgspec.json.encode(body))
    except RequestValidationError as exc:
        [item] = exc.items
        assert item.loc[0] == "body"
        assert item.loc[1:] and item.loc[1] in {"input", "agent_name", "session_id", "stream", "message"}
        assert item.msg
    else:
        assert request.input == (body.get("input") if body.get("input") is not None else body["message"])


@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_anything_but_request_errors(raw: bytes) -> None:
    bodies = (CreateSessionRequest, UpdateSessionRequest, Message | list[Message])
    decoders = [Decoder(body) for body in bodies]
    for decoder in (chat, *decoders):
        try:
            decoder.decode(raw)
        except RequestError as exc:
            assert exc.status_code in (400, 422)
            assert exc.message


def test_nested_path_becomes_loc() -> None:
    with pytest.raises(RequestValidationError) as caught:
        Decoder(list[Message]).decode(b'[{"role": "user"}, {"role": "bot"}]')
    assert caught.value.items[0].loc == ["body", 1, "role"]
