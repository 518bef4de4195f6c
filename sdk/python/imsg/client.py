"""The asyncio client. The Rust SDK (sdk/src/lib.rs) behaves the same way.

Messages are sent on the device's stream (no call per message, several may
be in flight) and acknowledged on it; a send still waiting when the stream
breaks goes again, with the same client message id, on the next stream. A
device does not receive its own new messages back as events: the
acknowledgement is its copy."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

import grpc
from google.rpc import error_details_pb2, status_pb2

from .v1 import messaging_pb2 as pb
from .v1 import messaging_pb2_grpc as pb_grpc

# Bytes per upload frame (the server takes up to 240 KiB).
UPLOAD_CHUNK = 128 * 1024

# Codes of a call that got no verdict from the server (the connection
# failed or was cut): retried with the client's own backoff.
NO_VERDICT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def retry_after(error: grpc.RpcError) -> Optional[float]:
    """Seconds to wait before retrying after `error`, or None when retrying
    the same request cannot succeed.

    The one rule every imsg client follows (imsg_common::retry in Rust): the
    server attaches google.rpc.RetryInfo to every transient refusal and never
    to a permanent one, whatever the code; a call without any verdict from
    the server (no status details) is retried with the client's backoff."""
    details = None
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value
    if details:
        for detail in status_pb2.Status.FromString(details).details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToTimedelta().total_seconds()
        return None
    return 0.0 if error.code() in NO_VERDICT else None


# google.rpc.Code numbers to grpc's status codes.
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def refused(error: pb.StreamError) -> grpc.aio.AioRpcError:
    """A refusal that arrived on the stream, as the error a unary call
    would have raised."""
    code = STATUS_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=error.message)


@dataclass
class Event:
    """One event for the application.

    kind is one of: "message", "reaction" (a ReactionUpdate; an empty emoji
    removed one), "message_update" (the Message as it now is: edited, or
    unsent with no content), "message_hidden" (deleted for this user on
    another device), "receipt", "typing", "presence", "conversation",
    "connected", "disconnected", "resync_required".
    """

    kind: str
    payload: Any


class Backoff:
    """Jittered exponential backoff."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most, self.next = first, most, first

    async def wait(self, at_least: float = 0.0) -> None:
        """The next step, or the server's advice if that is longer."""
        await asyncio.sleep(max(self.next * (0.5 + random.random() / 2), at_least))
        self.next = min(self.next * 2, self.most)

    def reset(self) -> None:
        self.next = self.first


class Client:
    """One device's connection to imsg."""

    def __init__(
        self,
        target: str,
        token: str,
        cursor: int = 0,
        backoff_first: float = 0.05,
        backoff_most: float = 5.0,
        tls: bool = False,
        ca_pem: Optional[bytes] = None,
    ) -> None:
        """`target` is `host:port`. With `tls` (implied by `ca_pem`) the
        connection is TLS, trusting the system's CAs or, when given, the CA
        certificate `ca_pem` (PEM bytes)."""
        self.target = target
        self._credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem) if tls or ca_pem else None
        self.cursor = cursor
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._backoff = (backoff_first, backoff_most)
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=1024)
        self._up: Optional[asyncio.Queue] = None
        self._newest: dict[str, int] = {}
        self._read_marks: dict[str, int] = {}
        # Sends on the stream without an outcome, by client message id, in
        # the order made: re-sent after a reconnect.
        self._sending: dict[str, tuple[pb.SendMessageRequest, asyncio.Future]] = {}
        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Optional[pb_grpc.MessagingServiceStub] = None
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> "Client":
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        else:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials)
        self._stub = pb_grpc.MessagingServiceStub(self._channel)
        self._task = asyncio.create_task(self._keep_streaming())
        return self

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._channel:
            await self._channel.close()

    async def next_event(self, timeout: Optional[float] = None) -> Event:
        return await asyncio.wait_for(self._events.get(), timeout)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    # ---- calls ----

    async def direct_with(self, peer: str) -> str:
        request = pb.CreateConversationRequest(direct=pb.DirectConversationSpec(peer_user_id=peer))
        response = await self._stub.CreateConversation(request, metadata=self._metadata)
        return response.conversation.conversation_id

    async def send_text(self, conversation: str, text: str, reply_to_seq: int = 0) -> pb.SendMessageResponse:
        """Sends a text (a reply when reply_to_seq is set); retried with the
        same client message id while the error is retryable."""
        return await self.send(conversation, reply_to_seq=reply_to_seq, text=pb.TextContent(text=text))

    async def send_link(self, conversation: str, url: str, text: str = "") -> pb.SendMessageResponse:
        return await self.send(conversation, link=pb.LinkContent(url=url, text=text))

    async def share(self, conversation: str, shared: pb.SharedContent) -> pb.SendMessageResponse:
        return await self.send(conversation, shared=shared)

    async def send(self, conversation: str, reply_to_seq: int = 0, **content: Any) -> pb.SendMessageResponse:
        """Sends any content (text=, link=, shared= or media=) on the
        device's stream; retried with the same client message id while the
        server says a retry may succeed. A refusal raises the
        grpc.aio.AioRpcError the unary SendMessage would have."""
        request = pb.SendMessageRequest(
            conversation_id=conversation,
            client_message_id=f"py-{uuid.uuid4().hex[:24]}",
            reply_to_seq=reply_to_seq,
            **content,
        )
        backoff = Backoff(*self._backoff)
        while True:
            outcome: asyncio.Future = asyncio.get_running_loop().create_future()
            self._sending[request.client_message_id] = (request, outcome)
            if self._up is not None:
                await self._up.put(pb.OpenStreamRequest(send_message=request))
            try:
                result = await outcome
            finally:
                self._sending.pop(request.client_message_id, None)
            if isinstance(result, pb.SendMessageResponse):
                return result
            if result.retry_after_ms == 0:
                raise refused(result)
            await backoff.wait(at_least=result.retry_after_ms / 1000)

    # ---- message requests, blocking, who may message me ----

    async def accept(self, conversation: str) -> pb.Conversation:
        """Accepts a message request: the conversation moves to the inbox."""
        request = pb.AcceptConversationRequest(conversation_id=conversation)
        return (await self._retrying(self._stub.AcceptConversation, request)).conversation

    async def decline(self, conversation: str) -> None:
        """Declines a message request (the sender is not told)."""
        request = pb.DeclineConversationRequest(conversation_id=conversation)
        await self._retrying(self._stub.DeclineConversation, request)

    async def requests(self) -> pb.ListConversationsResponse:
        """The message requests waiting for this user (first page)."""
        request = pb.ListConversationsRequest(folder=pb.FOLDER_REQUESTS)
        return await self._retrying(self._stub.ListConversations, request)

    async def block(self, user: str) -> None:
        await self._retrying(self._stub.BlockUser, pb.BlockUserRequest(user_id=user))

    async def unblock(self, user: str) -> None:
        await self._retrying(self._stub.UnblockUser, pb.UnblockUserRequest(user_id=user))

    async def blocked_users(self) -> list[str]:
        return list((await self._retrying(self._stub.ListBlockedUsers, pb.ListBlockedUsersRequest())).user_ids)

    async def set_who_may_message(self, who: int) -> None:
        """`pb.WHO_MAY_MESSAGE_EVERYONE`, `_CONTACTS` or `_NOBODY_NEW`."""
        await self._retrying(self._stub.UpdateSettings, pb.UpdateSettingsRequest(who_may_message=who))

    async def register_push_target(self, platform: int, token: str) -> None:
        """Push notifications for this device (`pb.PUSH_PLATFORM_APNS`, ...)."""
        request = pb.RegisterPushTargetRequest(platform=platform, token=token)
        await self._retrying(self._stub.RegisterPushTarget, request)

    async def mute(self, conversation: str, until_ms: int = -1, hide_previews: bool = False) -> None:
        """Mutes a conversation until then (-1: until unmuted; 0: unmutes)."""
        request = pb.SetConversationNotificationsRequest(
            conversation_id=conversation, muted_until_ms=until_ms, hide_previews=hide_previews
        )
        await self._retrying(self._stub.SetConversationNotifications, request)

    async def report(self, conversation: str, seq: int, reason: int, comment: str = "", block: bool = False) -> str:
        """Reports a message (seq 0: the conversation); answers the report id."""
        request = pb.ReportRequest(conversation_id=conversation, seq=seq, reason=reason, comment=comment, block=block)
        return (await self._retrying(self._stub.Report, request)).report_id

    async def export_my_data(self) -> bytes:
        """This user's data as one JSON document."""
        document = b""
        async for piece in self._stub.ExportMyData(pb.ExportMyDataRequest(), metadata=self._metadata):
            document += piece.chunk
        return document

    async def delete_account(self) -> pb.DeleteAccountResponse:
        return await self._retrying(self._stub.DeleteAccount, pb.DeleteAccountRequest())

    async def react(self, conversation: str, seq: int, emoji: str) -> None:
        """Sets this user's reaction (replacing theirs); "" removes it."""
        request = pb.ReactToMessageRequest(conversation_id=conversation, seq=seq, emoji=emoji)
        await self._retrying(self._stub.ReactToMessage, request)

    async def edit(self, conversation: str, seq: int, text: str) -> pb.EditMessageResponse:
        request = pb.EditMessageRequest(conversation_id=conversation, seq=seq, text=text)
        return await self._retrying(self._stub.EditMessage, request)

    async def unsend(self, conversation: str, seq: int) -> None:
        request = pb.UnsendMessageRequest(conversation_id=conversation, seq=seq)
        await self._retrying(self._stub.UnsendMessage, request)

    async def delete_for_me(self, conversation: str, seq: int) -> None:
        request = pb.DeleteMessageForMeRequest(conversation_id=conversation, seq=seq)
        await self._retrying(self._stub.DeleteMessageForMe, request)

    async def forward(self, conversation: str, seq: int, to: list[str]) -> pb.ForwardMessageResponse:
        request = pb.ForwardMessageRequest(
            conversation_id=conversation,
            seq=seq,
            to_conversation_ids=to,
            client_message_id=f"py-{uuid.uuid4().hex[:24]}",
        )
        return await self._retrying(self._stub.ForwardMessage, request)

    async def upload(self, kind: int, data: bytes, file_name: str = "") -> pb.MediaContent:
        """Uploads a medium (kind: pb.MEDIA_KIND_PHOTO, ...), resuming after a
        cut connection where the server has it; returns the verified medium
        to send with send_media."""
        upload_id = f"py-{uuid.uuid4().hex[:24]}"
        sha256 = hashlib.sha256(data).hexdigest()
        backoff = Backoff(*self._backoff)
        offset = 0

        def frames(offset: int):
            yield pb.UploadMediaRequest(
                start=pb.UploadStart(
                    upload_id=upload_id,
                    kind=kind,
                    size_bytes=len(data),
                    sha256=sha256,
                    offset=offset,
                    file_name=file_name,
                )
            )
            for at in range(offset, len(data), UPLOAD_CHUNK):
                yield pb.UploadMediaRequest(chunk=data[at : at + UPLOAD_CHUNK])

        while True:
            try:
                return (await self._stub.UploadMedia(frames(offset), metadata=self._metadata)).media
            except grpc.aio.AioRpcError as error:
                delay = retry_after(error)
                if delay is None:
                    raise
                await backoff.wait(at_least=delay)
            have = await self._stub.GetUpload(pb.GetUploadRequest(upload_id=upload_id), metadata=self._metadata)
            if have.HasField("media"):
                return have.media
            offset = min(have.received_bytes, len(data))

    async def send_media(self, conversation: str, media: pb.MediaContent, caption: str = "") -> pb.SendMessageResponse:
        return await self.send(conversation, media=pb.MediaContent(media_id=media.media_id, caption=caption))

    async def download(self, conversation: str, seq: int, thumbnail: bool = False) -> bytes:
        """The medium (or its thumbnail) of message seq."""
        request = pb.DownloadMediaRequest(conversation_id=conversation, seq=seq, thumbnail=thumbnail)
        parts = []
        async for frame in self._stub.DownloadMedia(request, metadata=self._metadata):
            parts.append(frame.chunk)
        return b"".join(parts)

    async def _retrying(self, method: Any, request: Any) -> Any:
        """Runs an idempotent call, retrying it unchanged while the server
        says a retry may succeed, no sooner than it says."""
        backoff = Backoff(*self._backoff)
        while True:
            try:
                return await method(request, metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                delay = retry_after(error)
                if delay is None:
                    raise
                await backoff.wait(at_least=delay)

    async def history(self, conversation: str, page_size: int = 50, page_token: str = "") -> pb.ListMessagesResponse:
        request = pb.ListMessagesRequest(conversation_id=conversation, page_size=page_size, page_token=page_token)
        return await self._stub.ListMessages(request, metadata=self._metadata)

    async def mark_read(self, conversation: str, seq: int) -> None:
        """Marks everything up to seq read; re-sent after a reconnect."""
        self._read_marks[conversation] = max(seq, self._read_marks.get(conversation, 0))
        if self._up is not None:
            await self._up.put(pb.OpenStreamRequest(mark_read=pb.MarkRead(conversation_id=conversation, seq=seq)))

    async def refresh_token(self, token: str) -> None:
        """Replaces the token before it expires: later calls and reconnects
        use it, and the open stream is told, so it goes on past the old
        token's expiry instead of ending with a goodbye."""
        self._metadata = (("authorization", f"Bearer {token}"),)
        if self._up is not None:
            await self._up.put(pb.OpenStreamRequest(refresh_token=pb.RefreshToken(token=token)))

    # ---- the stream ----

    async def _keep_streaming(self) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            try:
                await self._stream_once(backoff)
                reason = "stream ended"
            except grpc.aio.AioRpcError as error:
                reason = f"{error.code().name}: {error.details()}"
            self._up = None
            await self._events.put(Event("disconnected", reason))
            await backoff.wait()

    async def _stream_once(self, backoff: Backoff) -> None:
        up: asyncio.Queue = asyncio.Queue()
        await up.put(pb.OpenStreamRequest(hello=pb.Hello(cursor=self.cursor)))
        for conversation, seq in self._read_marks.items():
            await up.put(pb.OpenStreamRequest(mark_read=pb.MarkRead(conversation_id=conversation, seq=seq)))
        # Whatever was sent on the last stream without an outcome goes again;
        # sends made from here on put their own frame (no await in between).
        unanswered = [request for request, _ in self._sending.values()]
        self._up = up
        for request in unanswered:
            await up.put(pb.OpenStreamRequest(send_message=request))

        async def requests():
            while True:
                yield await up.get()

        call = self._stub.OpenStream(requests(), metadata=self._metadata)
        async for frame in call:
            which = frame.WhichOneof("frame")
            if which == "ready":
                backoff.reset()
                await self._events.put(Event("connected", frame.ready))
            elif which == "resync_required":
                self.cursor = frame.resync_required.cursor
                self._newest.clear()
                await self._events.put(Event("resync_required", frame.resync_required))
                return
            elif which == "goodbye":
                return
            elif which == "event":
                await self._deliver(frame.event)
            elif which == "send_outcome":
                outcome = frame.send_outcome
                waiting = self._sending.get(outcome.client_message_id)
                if waiting is not None and not waiting[1].done():
                    settled = outcome.WhichOneof("outcome")
                    waiting[1].set_result(outcome.sent if settled == "sent" else outcome.error)

    async def _deliver(self, event: pb.Event) -> None:
        kind = event.WhichOneof("kind")
        payload = getattr(event, kind) if kind else None
        if kind == "message":
            newest = self._newest.get(payload.conversation_id, 0)
            if payload.seq <= newest:
                kind = None  # already delivered before a reconnect
            else:
                self._newest[payload.conversation_id] = payload.seq
        elif kind == "presence":
            payload = payload.presence
        elif kind == "message_update":
            payload = payload.message
        if kind:
            await self._events.put(Event(kind, payload))
        # The cursor moves past an event only once the application has it.
        if event.cursor > self.cursor:
            self.cursor = event.cursor
