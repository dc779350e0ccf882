"""Client sockets from many source addresses, for the load generators that hold thousands of
connections to one port (idle_conns.py, slowloris.py).

Each loopback source address 127.0.0.K has its own ephemeral port range (~28,000 ports), so
spreading connections over several addresses opens more of them to one destination than one
range holds. Standard library only.
"""
import asyncio
import resource
import socket

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def addresses(count, first):
    """The `count` source addresses 127.0.0.first, 127.0.0.(first + 1), ..."""
    return [f"127.0.0.{first + k}" for k in range(count)]


async def connect_from(host, port, source):
    """asyncio.open_connection from a chosen source address (None: the kernel's choice).
    IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), where the kernel picks per
    destination: a plain bind(addr, 0) picks a port unique over all destinations and gets slow
    once thousands are taken."""
    if not source:
        return await asyncio.open_connection(host, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def allow_connections(n):
    """Raises the open-file limit (up to the hard limit) so that `n` connections fit, with
    room for the process's own files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
