"""Socket options of the multicast transport (loopback only)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from helpers import free_endpoint

from grapevine import ConfigError
from grapevine._transport import check_endpoint, open_receiver, open_sender

pytestmark = pytest.mark.network


def test_receiver_warns_when_the_os_clamps_the_buffer(caplog: pytest.LogCaptureFixture,
                                                      endpoint: dict[str, Any]) -> None:
    with open("/proc/sys/net/core/rmem_max") as limit:
        rmem_max = int(limit.read())
    with caplog.at_level(logging.WARNING, logger="grapevine"):
        receiver = open_receiver(**endpoint, buffer_bytes=rmem_max * 4)
    try:
        assert receiver.buffer_size < rmem_max * 4
        assert "clamped" in caplog.text
        assert receiver.sock.getsockname() == (endpoint["group"], endpoint["port"])  # group only
    finally:
        receiver.close()


def test_two_receivers_share_a_port_and_both_get_each_datagram(
        endpoint: dict[str, Any]) -> None:
    first = open_receiver(**endpoint)
    second = open_receiver(**endpoint)
    sender = open_sender(**endpoint)
    try:
        sender.send(b"hello")
        for receiver in (first, second):
            receiver.settimeout(5)
            buffer = bytearray(64)
            size = receiver.recv_into(buffer)
            assert bytes(buffer[:size]) == b"hello"
    finally:
        for thing in (first, second, sender):
            thing.close()


def test_kernel_drops_are_read_from_the_socket(endpoint: dict[str, Any]) -> None:
    receiver = open_receiver(**endpoint, buffer_bytes=4096)
    sender = open_sender(**endpoint)
    try:
        for _ in range(2000):  # far more than a 4 KiB buffer holds
            sender.send(bytes(1000))
        receiver.settimeout(1)
        buffer = bytearray(2048)
        received = 0
        try:
            while True:
                receiver.recv_into(buffer)
                received += 1
        except TimeoutError:
            pass
        # Linux stamps the drop count on datagrams queued after the drops: send one more.
        sender.send(b"after")
        receiver.recv_into(buffer)
        assert receiver.drops_supported
        assert receiver.kernel_drops > 0
        assert received + receiver.kernel_drops == 2000
    finally:
        receiver.close()
        sender.close()


def test_the_receive_queue_fill_is_read_from_the_socket(endpoint: dict[str, Any]) -> None:
    """SO_MEMINFO (Linux): what the subscriber's shedding policy watches (issue 12)."""
    receiver = open_receiver(**endpoint, buffer_bytes=1 << 20)
    sender = open_sender(**endpoint)
    try:
        assert receiver.queue_fill() == 0.0
        assert receiver.nothing_queued()
        for _ in range(100):
            sender.send(bytes(1000))
        receiver.settimeout(1)
        buffer = bytearray(2048)
        receiver.recv_into(buffer)  # the datagrams are queued by the time one is read
        full = receiver.queue_fill()
        assert full is not None
        assert 0.05 < full <= 1.0
        assert not receiver.nothing_queued()
        for _ in range(98):
            receiver.recv_into(buffer)
        assert not receiver.nothing_queued()  # one datagram is left
        receiver.recv_into(buffer)
        assert receiver.queue_fill() == 0.0
        assert receiver.nothing_queued()
    finally:
        receiver.close()
        sender.close()


def test_sender_defaults_are_loopback_and_ttl_zero(endpoint: dict[str, Any]) -> None:
    sender = open_sender(**endpoint)
    try:
        assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 0
        assert socket.inet_ntoa(sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                                  4)) == "127.0.0.1"
    finally:
        sender.close()


@pytest.mark.parametrize(("group", "port", "interface", "message"), [
    ("224.0.0", 1, "127.0.0.1", "not an IPv4"),
    ("192.168.1.1", 1, "127.0.0.1", "not a multicast"),
    ("239.1.1.1", 0, "127.0.0.1", "port"),
    ("239.1.1.1", 1, "eth0", "interface"),
])
def test_bad_endpoints_are_refused(group: str, port: int, interface: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_endpoint(group, port, interface)
    with pytest.raises(ConfigError):
        open_sender(**free_endpoint(), ttl=256)
