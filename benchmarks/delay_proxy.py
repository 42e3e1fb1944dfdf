"""A TCP forwarder on 127.0.0.1 that adds a set network delay, for benchmarks.

Every chunk is forwarded `one_way` seconds after it arrived, in order, in both
directions. A new connection's first bytes towards the server wait one round
trip more: on a real network the client could not have sent them before the
TCP handshake (SYN, SYN-ACK) was done. TLS passes through untouched. Nothing
here talks to any host but 127.0.0.1.

    proxy = DelayProxy(target_port=8443, one_way=0.05)  # 100 ms RTT
    proxy.start()  # a thread of its own; proxy.port is where to connect
"""

from __future__ import annotations

import asyncio
import threading


class DelayProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, `one_way` s each way."""

    def __init__(self, target_port: int, one_way: float) -> None:
        self.target_port = target_port
        self.one_way = one_way
        self.port = 0
        self.connections = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()

    def start(self) -> DelayProxy:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        handshake_done = self._loop.time() + 2 * self.one_way
        server_in, server_out = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        await asyncio.gather(
            self._pipe(client_in, server_out, not_before=handshake_done),
            self._pipe(server_in, client_out, not_before=0.0),
        )

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        not_before: float,
    ) -> None:
        """Forward each chunk `one_way` s after it arrived (b"" closes), in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        delivery = asyncio.ensure_future(self._deliver(queue, sink))
        try:
            while data := await source.read(65536):
                arrived = max(self._loop.time(), not_before)
                queue.put_nowait((arrived + self.one_way, data))
        except OSError:
            pass
        queue.put_nowait((self._loop.time() + self.one_way, b""))
        await delivery

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - self._loop.time()))
            if not data or sink.is_closing():
                sink.close()
                return
            sink.write(data)
