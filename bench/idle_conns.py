#!/usr/bin/env python3
"""Holds many idle keep-alive connections open to a server on 127.0.0.1.

    idle_conns.py PORT COUNT PATH MAX_SECONDS

Opens COUNT connections (200 at a time), sends one `GET PATH` on each and reads the answer,
then keeps every connection open and idle. Prints one JSON line {"event": "ready", ...},
waits for a line on standard input (or MAX_SECONDS at most), prints {"event": "done",
"still_open": N, ...} (connections the server has not closed), closes them all and exits."""

import asyncio
import json
import resource
import sys
import time

BATCH = 200


async def one(port: int, path: str):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, reader, writer


async def main() -> None:
    port, count, path, max_seconds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    start = time.monotonic()
    conns, failed, statuses = [], 0, {}
    for i in range(0, count, BATCH):
        results = await asyncio.gather(*(one(port, path) for _ in range(min(BATCH, count - i))), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
            else:
                statuses[r[0]] = statuses.get(r[0], 0) + 1
                conns.append(r)
    print(json.dumps({"event": "ready", "open": len(conns), "failed": failed, "statuses": statuses,
                      "seconds": round(time.monotonic() - start, 3)}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), max_seconds)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.05)  # let pending EOFs arrive
    still_open = sum(1 for _, reader, writer in conns if not reader.at_eof() and not writer.is_closing())
    held = round(time.monotonic() - start, 3)
    for _, _, writer in conns:
        writer.close()
    print(json.dumps({"event": "done", "still_open": still_open, "held_seconds": held}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
