"""`session_router`: create, list, read, update and delete sessions and their messages.

`GET /sessions` answers a JSON list, as the original package does; when more
pages exist, the `X-Next-Cursor` header (and a `Link: rel="next"`) carries
the cursor for the next call. `POST /sessions/{id}/messages` takes one
message or a list, and answers in kind.

The endpoints carry the original package's handler names, as do their routes.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._codec import Decoder, RequestValidationError, encode
from ._context import Limits, get_context
from ._http import Endpoint, query_params, read_body, read_json, send_json
from .exceptions import SessionNotFound
from .models import (
    AppendMessageRequest,
    CreateSessionRequest,
    ErrorDetail,
    Message,
    Session,
    SessionMessage,
    SessionSummary,
    UpdateSessionRequest,
    ValidationErrorItem,
)
from .routing import Operation, Router
from .stores.base import DEFAULT_PAGE_SIZE

__all__ = [
    "AppendMessageRequest",
    "CreateSessionRequest",
    "Session",
    "SessionMessage",
    "SessionSummary",
    "UpdateSessionRequest",
    "append_message",
    "create_session",
    "delete_session",
    "get_session",
    "list_messages",
    "list_sessions",
    "session_router",
    "update_session",
]

_create: Decoder[CreateSessionRequest] = Decoder(CreateSessionRequest)
_update: Decoder[UpdateSessionRequest] = Decoder(UpdateSessionRequest)
_messages: Decoder[Message | list[Message]] = Decoder(Message | list[Message])


def _session_id(scope: Scope) -> str:
    return get_context(scope).limits.check_session_id(scope["path_params"]["session_id"])


def _limit(raw: str | None, limits: Limits) -> int:
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, limits.max_page_size)
    # isdigit() alone admits "¹" and other digits int() refuses
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= limits.max_page_size:
        item = ValidationErrorItem(
            loc=["query", "limit"],
            msg=f"Input should be an integer from 1 to {limits.max_page_size}",
            type="value_error",
        )
        raise RequestValidationError([item])
    return int(raw)


class CreateSession(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        body = await read_body(scope, receive, context.limits.max_body_size)
        request = _create.decode(body) if body.strip() else CreateSessionRequest()
        if request.id is not None:
            context.limits.check_session_id(request.id)
        context.limits.check_depth(request.metadata, "metadata")
        session = await context.store.create(
            agent_name=request.agent_name,
            title=request.title,
            metadata=request.metadata,
            session_id=request.id,
        )
        await send_json(send, encode(session), 201)


class ListSessions(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = query_params(scope)
        context = get_context(scope)
        limit = _limit(query.get("limit"), context.limits)
        agent_name = query.get("agent_name") or None
        page = await context.store.list(
            agent_name=agent_name, limit=limit, cursor=query.get("cursor") or None
        )
        headers = None
        if page.next_cursor is not None:
            next_query = {"limit": limit, "cursor": page.next_cursor}
            if agent_name:
                next_query["agent_name"] = agent_name
            link = f'<{scope["path"]}?{urlencode(next_query)}>; rel="next"'
            headers = [(b"x-next-cursor", page.next_cursor.encode()), (b"link", link.encode())]
        await send_json(send, encode(page.items), headers=headers)


class GetSession(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = await get_context(scope).store.get(_session_id(scope))
        await send_json(send, encode(session))


class UpdateSession(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        session_id = _session_id(scope)
        update = await read_json(scope, receive, _update, context.limits.max_body_size)
        context.limits.check_depth(update.metadata, "metadata")
        session = await context.store.update(
            session_id, title=update.title, agent_name=update.agent_name, metadata=update.metadata
        )
        await send_json(send, encode(session))


class DeleteSession(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        store = get_context(scope).store
        session_id = _session_id(scope)
        async with store.lock(session_id):  # waits for a running turn to end
            deleted = await store.delete(session_id)
        if not deleted:
            raise SessionNotFound.of(session_id)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class ListMessages(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages = await get_context(scope).store.messages(_session_id(scope))
        await send_json(send, encode(messages))


class AppendMessage(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        session_id = _session_id(scope)
        body = await read_json(scope, receive, _messages, context.limits.max_body_size)
        messages = body if isinstance(body, list) else [body]
        for message in messages:
            for call in message.tool_calls or ():
                context.limits.check_depth(call.arguments, "tool_calls")
        store = context.store
        async with store.lock(session_id):
            stored = await store.append(session_id, messages)
        await send_json(send, encode(stored if isinstance(body, list) else stored[0]), 201)


create_session = CreateSession()
list_sessions = ListSessions()
get_session = GetSession()
update_session = UpdateSession()
delete_session = DeleteSession()
list_messages = ListMessages()
append_message = AppendMessage()

_TAGS = ["sessions"]
_ERRORS = {404: ErrorDetail, 400: ErrorDetail}

session_router = Router(
    [
        Route("/sessions", create_session, methods=["POST"], name="create_session"),
        Route("/sessions", list_sessions, methods=["GET"], name="list_sessions"),
        Route("/sessions/{session_id}", get_session, methods=["GET"], name="get_session"),
        Route("/sessions/{session_id}", update_session, methods=["PATCH"], name="update_session"),
        Route("/sessions/{session_id}", delete_session, methods=["DELETE"], name="delete_session"),
        Route("/sessions/{session_id}/messages", list_messages, methods=["GET"], name="list_messages"),
        Route("/sessions/{session_id}/messages", append_message, methods=["POST"], name="append_message"),
    ],
    operations=[
        Operation(
            method="post", path="/sessions", summary="Create a session", request=CreateSessionRequest,
            response=Session, status=201, responses={409: ErrorDetail}, tags=_TAGS,
        ),
        Operation(
            method="get", path="/sessions", summary="List sessions, newest first",
            response=list[SessionSummary], tags=_TAGS,
            query=[("agent_name", str, False), ("limit", int, False), ("cursor", str, False)],
        ),
        Operation(
            method="get", path="/sessions/{session_id}", summary="Get a session with its messages",
            response=Session, responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="patch", path="/sessions/{session_id}", summary="Update title, metadata or agent",
            request=UpdateSessionRequest, response=Session, responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="delete", path="/sessions/{session_id}", summary="Delete a session",
            status=204, responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="get", path="/sessions/{session_id}/messages", summary="List messages",
            response=list[Message], responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="post", path="/sessions/{session_id}/messages",
            summary="Append a message, or a list of them; answered in kind",
            request=Message | list[Message], response=Message | list[Message], status=201,
            responses=_ERRORS, tags=_TAGS,
        ),
    ],
)
