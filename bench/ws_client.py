"""Closed-loop WebSocket clients for bench/instructions.sh (Python's standard library only).

    python3 bench/echo_client.py echo|connect PORT CLIENTS COUNT_EACH

`echo`: each client upgrades, then sends `echo <59 bytes>` (the bench's 64-byte message) and
waits for the reply, COUNT_EACH times. `connect`: each client connects, upgrades, makes one
such echo and closes, COUNT_EACH times (the bench's `connect`). Prints how many replies came
back. Speed does not matter here: the server runs under callgrind, which counts
instructions, not time.
"""

import asyncio
import base64
import os
import struct
import sys

MESSAGE = b"echo " + b"x" * 59


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", await reader.readexactly(8))[0]
    return await reader.readexactly(length)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in status.split(b"\r\n", 1)[0]:
        raise SystemExit(f"upgrade refused: {status[:60]!r}")
    return reader, writer


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(masked_text_frame(MESSAGE))
    if await read_frame(reader) != MESSAGE[len(b"echo ") :]:
        raise SystemExit("a reply that is not the echo")


async def echo_client(port: int, count: int) -> int:
    reader, writer = await connect(port)
    for _ in range(count):
        await echo(reader, writer)
    writer.close()
    return count


async def connect_client(port: int, count: int) -> int:
    for _ in range(count):
        reader, writer = await connect(port)
        await echo(reader, writer)
        writer.close()
        await writer.wait_closed()
    return count


async def main() -> None:
    client = {"echo": echo_client, "connect": connect_client}[sys.argv[1]]
    port, clients, each = (int(a) for a in sys.argv[2:5])
    done = await asyncio.gather(*(client(port, each) for _ in range(clients)))
    print(sum(done))


asyncio.run(main())
