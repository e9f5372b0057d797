"""A TCP relay in front of tansu that can stop acknowledging writes: with `hold_produce` set, a connection
that sends a Produce request is frozen from that request on (nothing more is relayed either way), as a
broker that has stopped answering writes looks to a producer; fetches, commits and metadata on other
connections go on. `release()` drops the frozen connections, so their clients reconnect."""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field

PRODUCE = 0  # the Kafka API key of Produce requests


@dataclass
class KafkaProxy:
    port: int
    upstream_port: int
    hold_produce: bool = False
    held: int = 0  # Produce requests held so far
    frozen: list[asyncio.StreamWriter] = field(default_factory=list)

    def start(self) -> KafkaProxy:
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="kafka-proxy")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def release(self) -> None:
        """Stop holding writes and close the frozen connections."""

        def drop() -> None:
            self.hold_produce = False
            for writer in self.frozen:
                writer.close()
            self.frozen.clear()

        self.loop.call_soon_threadsafe(drop)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await asyncio.gather(self._requests(reader, up_writer, writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _requests(
        self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, writer: asyncio.StreamWriter
    ) -> None:
        """Relay request frames one by one; a Produce while holding freezes the connection for good."""
        while True:
            size = await reader.readexactly(4)
            frame = await reader.readexactly(struct.unpack(">i", size)[0])
            if self.hold_produce and struct.unpack(">h", frame[:2])[0] == PRODUCE:
                self.held += 1
                self.frozen.append(writer)
                await asyncio.Event().wait()  # never relayed; the connection is closed by release()
            up_writer.write(size + frame)
            await up_writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
