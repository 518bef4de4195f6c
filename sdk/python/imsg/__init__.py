"""Python SDK for imsg.

`Client` keeps one device's realtime stream open with asyncio: when it
breaks, it reconnects with jittered exponential backoff and resumes from
the cursor of the last event it handed to the application, dropping
repeats by (conversation, seq). Sends are retried with the same client
message id until acknowledged; the server deduplicates them.

    client = Client("127.0.0.1:7000", token)
    await client.start()
    conversation = await client.direct_with("bob")
    await client.send_text(conversation, "hi bob")
    event = await client.next_event()   # ("message", Message) ...
"""

from .client import Client, Event

__all__ = ["Client", "Event"]
