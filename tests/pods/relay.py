"""The pod network without a CNI: TCP on a pod's loopback <-> Unix sockets in a directory shared with the host.

Each pod runs in its own network namespace (bwrap --unshare-net: only `lo`), so two pods can both listen on
8001. This script is the pod's network plumbing, started as the container's first process:
- `inbound`: a Unix socket per container port; the host (the kubelet's probes, the test's clients, other
  pods' Services) connects there and reaches 127.0.0.1:<port> inside the pod;
- `outbound`: a TCP listener on an address of the pod's loopback (the one /etc/hosts gives a Service or the
  broker) that forwards to a Unix socket (another pod's inbound socket, or the host relay to RabbitMQ).
It binds everything, then forks: the child serves, the parent `exec`s the container's command, which thus
keeps the pid bwrap gave it (1, as in a container), and connections made before the child runs wait in the
listen backlog. Without a command (on the host) it prints `ready` and serves until its stdin closes.
Stdlib only.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


def _forward(connect):  # noqa: ANN001, ANN202
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await connect()
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    return handle


def _listeners(config: dict) -> list[tuple[socket.socket, object]]:
    out = []
    for path, port in config.get("inbound", []):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        os.chmod(path, 0o777)
        sock.listen(128)
        out.append((sock, _forward(lambda port=port: asyncio.open_connection("127.0.0.1", port))))
    for host, port, path in config.get("outbound", []):
        sock = socket.socket(socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        out.append((sock, _forward(lambda path=path: asyncio.open_unix_connection(path))))
    return out


async def _serve(listeners: list[tuple[socket.socket, object]]) -> None:
    for sock, handler in listeners:
        if sock.family == socket.AF_UNIX:
            await asyncio.start_unix_server(handler, sock=sock)
        else:
            await asyncio.start_server(handler, sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    config = json.loads(open(sys.argv[1]).read())
    command = sys.argv[3:] if len(sys.argv) > 2 and sys.argv[2] == "--" else []
    listeners = _listeners(config)
    if not command:
        # on the host: serve until the test process goes away (its end of our stdin closes), however it ends
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
        print("ready", flush=True)
        asyncio.run(_serve(listeners))
        return
    if os.fork() == 0:
        os.setsid()
        asyncio.run(_serve(listeners))
        os._exit(0)
    for sock, _ in listeners:
        sock.close()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
