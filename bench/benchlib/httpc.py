"""A small blocking HTTP/1.1 client on one keep-alive connection (http.client), for requests
whose time is measured one by one: big bodies, the decision workload."""

from __future__ import annotations

import http.client
import json
import select
import time
import urllib.parse

CHUNK = 1 << 20


class Conn:
    def __init__(self, base_url: str, timeout: float = 300.0):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname, u.port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self.buffer = bytearray(CHUNK)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                keep: bool = True) -> tuple[int, dict, bytes | int, float]:
        """Sends one request; returns (status, headers, body or its length when `keep` is
        false, seconds from the first byte sent to the last byte read)."""
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        self._drop_if_closed()
        start = time.perf_counter()
        self.conn.request(method, path, body=body, headers=h)
        resp = self.conn.getresponse()
        if keep:
            data: bytes | int = resp.read()
        else:
            view, n = memoryview(self.buffer), 0
            while True:
                got = resp.readinto(view)
                if not got:
                    break
                n += got
            data = n
        elapsed = time.perf_counter() - start
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, elapsed


    def _drop_if_closed(self) -> None:
        """Forge (uvicorn) closes a connection after a 500 made from an exception: a kept
        connection the server has closed is readable (EOF) while idle. Drop it, so that the
        next request opens a new one, as urllib3 (requests) does before reusing one."""
        sock = self.conn.sock
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self.conn.close()


def get_json(base_url: str, path: str, timeout: float = 60.0):
    with Conn(base_url, timeout) as c:
        status, _, data, _ = c.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {base_url}{path}: {status} {data[:300]!r}")
        return json.loads(data)


def post_json(base_url: str, path: str, payload, timeout: float = 60.0):
    with Conn(base_url, timeout) as c:
        status, headers, data, _ = c.request("POST", path, json.dumps(payload).encode())
        return status, headers, data


def delete(base_url: str, path: str, timeout: float = 60.0) -> int:
    with Conn(base_url, timeout) as c:
        status, _, _, _ = c.request("DELETE", path)
        return status
