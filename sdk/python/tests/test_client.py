"""The Python SDK against a real server: chatting, and resuming with no gap
and no duplicate after the connection is cut mid-conversation."""

import asyncio

import grpc

from conftest import token
from imsg import Client


async def wait_for(client, kind, timeout=10.0):
    while True:
        event = await client.next_event(timeout)
        if event.kind == kind:
            return event


def test_two_clients_chat(server):
    async def scenario():
        alice = await Client(server, token("alice")).start()
        bob = await Client(server, token("bob")).start()
        try:
            conversation = await alice.direct_with("bob")
            await bob.accept(conversation)  # bob knows alice
            await wait_for(bob, "connected")
            ack = await alice.send_text(conversation, "hello from python")
            assert ack.seq == 1
            message = (await wait_for(bob, "message")).payload
            assert (message.sender_id, message.seq, message.text.text) == ("alice", 1, "hello from python")
            await bob.mark_read(conversation, 1)
            receipt = (await wait_for(alice, "receipt")).payload
            while receipt.user_id != "bob" or receipt.read_seq != 1:
                receipt = (await wait_for(alice, "receipt")).payload
            history = await bob.history(conversation)
            assert [m.seq for m in history.messages] == [1]
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_tls_with_a_private_ca(tls_server):
    address, ca_pem = tls_server

    async def scenario():
        alice = await Client(address, token("alice"), ca_pem=ca_pem).start()
        try:
            conversation = await alice.direct_with("bob")
            assert (await alice.send_text(conversation, "over TLS")).seq == 1
            history = await alice.history(conversation)
            assert [m.text.text for m in history.messages] == ["over TLS"]
        finally:
            await alice.close()
        # Trusting only the system's CAs, the private certificate is refused.
        untrusting = await Client(address, token("alice"), tls=True).start()
        try:
            await untrusting.direct_with("bob")
            raise AssertionError("a certificate from an unknown CA was accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        finally:
            await untrusting.close()

    asyncio.run(scenario())


def test_a_refreshed_token_keeps_the_stream_open(server):
    async def scenario():
        alice = await Client(server, token("alice", ttl_secs=2)).start()
        bob = await Client(server, token("bob")).start()
        try:
            await wait_for(alice, "connected")
            await alice.refresh_token(token("alice"))
            await asyncio.sleep(4)  # past the first token's expiry
            conversation = await alice.direct_with("bob")
            await bob.accept(conversation)
            await bob.send_text(conversation, "still there?")
            while True:
                event = await alice.next_event(10.0)
                assert event.kind != "disconnected", event
                if event.kind == "message":
                    assert event.payload.sender_id == "bob"
                    break
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


class Proxy:
    """A TCP proxy whose connections can be cut, as a failing network would."""

    def __init__(self, target):
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.connections = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        self.connections.add((writer, upstream_writer))

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut_all(self):
        for downstream, upstream in self.connections:
            downstream.transport.abort()
            upstream.transport.abort()
        self.connections.clear()

    async def stop(self):
        self.cut_all()
        self.server.close()


def test_a_cut_connection_resumes_with_no_gap_and_no_duplicate(server):
    async def scenario():
        proxy = Proxy(server)
        proxied = await proxy.start()
        alice = await Client(server, token("alice")).start()
        bob = await Client(proxied, token("bob"), backoff_first=0.02, backoff_most=0.2).start()
        try:
            conversation = await alice.direct_with("bob")
            await bob.accept(conversation)
            await wait_for(bob, "connected")
            total = 150

            async def send_all():
                for n in range(1, total + 1):
                    await alice.send_text(conversation, f"message {n}")
                    if n % 20 == 0:
                        await asyncio.sleep(0.015)

            sending = asyncio.create_task(send_all())
            seqs, disconnects = [], 0
            while len(seqs) < total:
                event = await bob.next_event(15)
                if event.kind == "message":
                    seqs.append(event.payload.seq)
                    if len(seqs) in (40, 100):
                        proxy.cut_all()
                elif event.kind == "disconnected":
                    disconnects += 1
            await sending
            assert seqs == list(range(1, total + 1)), "every message once, in order"
            assert disconnects >= 2, f"the connection was cut twice, saw {disconnects} disconnects"
        finally:
            await alice.close()
            await bob.close()
            await proxy.stop()

    asyncio.run(scenario())


def test_transient_refusals_are_retried_as_told_and_permanent_ones_are_not(rate_limited_server):
    """The server's rate limit answers RESOURCE_EXHAUSTED with RetryInfo:
    send_text waits as told and every send is acknowledged. A non-member's
    send is refused for good (PERMISSION_DENIED, no RetryInfo): no retry."""
    import time

    import grpc
    import pytest

    from imsg.client import retry_after

    async def scenario():
        alice = await Client(rate_limited_server, token("alice")).start()
        mallory = await Client(rate_limited_server, token("mallory")).start()
        conversation = await alice.direct_with("bob")
        bob = await Client(rate_limited_server, token("bob")).start()
        await bob.accept(conversation)
        await bob.close()
        started = time.monotonic()
        for n in range(15):
            ack = await alice.send_text(conversation, f"message {n}")
            assert ack.seq == n + 1
        # A burst of 10, then 5 a second: the last sends waited as told.
        assert time.monotonic() - started >= 0.6

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mallory.send_text(conversation, "let me in")
        # Not a member: answered as a conversation that does not exist.
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert retry_after(refused.value) is None
        assert time.monotonic() - started < 0.5, "a permanent refusal was retried"
        await alice.close()
        await mallory.close()

    asyncio.run(scenario())


def test_react_reply_edit_unsend_delete_for_me_and_forward(server):
    async def scenario():
        alice = await Client(server, token("alice")).start()
        bob = await Client(server, token("bob")).start()
        try:
            with_bob = await alice.direct_with("bob")
            with_carol = await alice.direct_with("carol")
            await bob.accept(with_bob)
            await wait_for(bob, "connected")
            first = await alice.send_text(with_bob, "lunch?")
            await wait_for(bob, "message")
            reply = await bob.send_text(with_bob, "sure", reply_to_seq=first.seq)
            await bob.react(with_bob, first.seq, "👍")
            reaction = (await wait_for(alice, "reaction")).payload
            assert (reaction.seq, reaction.user_id, reaction.emoji) == (first.seq, "bob", "👍")
            await alice.edit(with_bob, first.seq, "lunch at 1?")
            edited = (await wait_for(bob, "message_update")).payload
            assert edited.text.text == "lunch at 1?" and edited.edit_time_ms > 0
            history = (await bob.history(with_bob)).messages
            assert history[1].reply_preview.snippet == "lunch at 1?"
            assert [(r.user_id, r.emoji) for r in history[0].reactions] == [("bob", "👍")]

            copies = await alice.forward(with_bob, first.seq, [with_carol])
            assert [c.conversation_id for c in copies.messages] == [with_carol]
            assert (await alice.history(with_carol)).messages[0].forwarded

            await alice.unsend(with_bob, first.seq)
            unsent = (await wait_for(bob, "message_update")).payload
            assert unsent.unsent and not unsent.HasField("text")
            await bob.delete_for_me(with_bob, reply.seq)
            assert [m.seq for m in (await bob.history(with_bob)).messages] == [first.seq]
            assert [m.seq for m in (await alice.history(with_bob)).messages] == [first.seq, reply.seq]
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_upload_send_and_download_a_file(server):
    async def scenario():
        import os

        from imsg.v1 import messaging_pb2 as pb

        alice = await Client(server, token("alice")).start()
        bob = await Client(server, token("bob")).start()
        try:
            conversation = await alice.direct_with("bob")
            data = b"%PDF-1.7\n" + os.urandom(700 * 1024)
            media = await alice.upload(pb.MEDIA_KIND_FILE, data, "report.pdf")
            assert (media.kind, media.size_bytes, media.file_name) == (pb.MEDIA_KIND_FILE, len(data), "report.pdf")
            sent = await alice.send_media(conversation, media, "the report")
            assert await bob.download(conversation, sent.seq) == data
            message = (await bob.history(conversation)).messages[0]
            assert (message.media.caption, message.media.mime_type) == ("the report", "application/pdf")
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_requests_blocking_reports_export_and_account_deletion(server):
    async def scenario():
        import json

        import grpc
        from imsg.v1 import messaging_pb2 as pb

        alice = await Client(server, token("alice")).start()
        bob = await Client(server, token("bob")).start()
        try:
            # A stranger's conversation waits in the requests folder.
            conversation = await alice.direct_with("bob")
            await alice.send_text(conversation, "hi, we met at the conference")
            requests = await bob.requests()
            assert [s.conversation.conversation_id for s in requests.conversations] == [conversation]
            accepted = await bob.accept(conversation)
            assert not any(m.request_pending for m in accepted.members)
            sent = await bob.send_text(conversation, "hello!")
            await bob.mute(conversation, -1)
            # Reporting with a block; the block is listed.
            report_id = await bob.report(conversation, 1, pb.REPORT_REASON_SPAM, "unsolicited", block=True)
            assert report_id.startswith("rep_")
            assert await bob.blocked_users() == ["alice"]
            try:
                await alice.send_text(conversation, "hello?")
                raise AssertionError("a blocked sender was accepted")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            await bob.unblock("alice")
            # Export, then deletion.
            document = json.loads(await bob.export_my_data())
            assert document["user_id"] == "bob"
            mine = [c for c in document["conversations"] if c["conversation"]["conversation_id"] == conversation][0]
            assert [m["content"]["text"] for m in mine["messages_sent"]] == ["hello!"]
            deleted = await bob.delete_account()
            assert deleted.messages_erased == 1
            history = (await alice.history(conversation)).messages
            erased = [m for m in history if m.seq == sent.seq][0]
            assert erased.sender_deleted and not erased.HasField("text")
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
