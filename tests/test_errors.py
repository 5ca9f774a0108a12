"""One error tree (issue 11): every error Grapevine raises on purpose is a GrapevineError,
and each kind of mistake raises the same documented error wherever it is made."""

from __future__ import annotations

import errno
import inspect
from typing import Any

import pytest
from helpers import ChainModel

import grapevine
from grapevine import (
    BytesModel,
    ConfigError,
    EncodeError,
    GrapevineError,
    LeafIdError,
    NetworkError,
    PcapError,
    Publisher,
    PublisherConfig,
    QueueFullError,
    Subscriber,
    UnknownLeafError,
)
from grapevine._publisher_core import PublisherCore
from grapevine._subscriber_core import SubscriberCore

NO_SUCH_INTERFACE = "10.255.255.254"  # an address no interface of the test host has


def test_every_public_exception_is_in_the_tree() -> None:
    errors = [obj for name in grapevine.__all__
              if inspect.isclass(obj := getattr(grapevine, name))
              and issubclass(obj, BaseException)]
    assert len(errors) >= 12
    for error in errors:
        assert issubclass(error, GrapevineError), error


def test_back_pressure_is_not_an_encoding_error() -> None:
    assert not issubclass(QueueFullError, EncodeError)
    core = PublisherCore(ChainModel(), PublisherConfig(max_queued_deltas=1), now=0.0,
                         session_id=3)
    core.publish(1, 1)
    with pytest.raises(QueueFullError):
        core.publish(2, 2)
    assert 2 not in core.leaves  # not applied


@pytest.mark.parametrize("bad", [-1, 2**32, "7", 1.0])
def test_a_bad_leaf_id_is_the_same_error_from_publish_and_on_leaf(
        bad: Any, endpoint: dict[str, Any]) -> None:
    core = PublisherCore(ChainModel(), PublisherConfig(), now=0.0, session_id=3)
    with pytest.raises(LeafIdError):
        core.publish(bad, 1)
    with pytest.raises(LeafIdError):
        PublisherCore(ChainModel(), PublisherConfig(), now=0.0, session_id=3,
                      initial={bad: (0, 0)})
    with Subscriber(BytesModel(), **endpoint) as sub, pytest.raises(LeafIdError):
        sub.on_leaf(bad, lambda *_: None)
    assert issubclass(LeafIdError, ConfigError)
    assert issubclass(LeafIdError, EncodeError)  # what publish raised before


def test_a_missing_leaf_is_a_documented_error_that_is_still_a_key_error(
        endpoint: dict[str, Any]) -> None:
    core = PublisherCore(ChainModel(), PublisherConfig(), now=0.0, session_id=3)
    with pytest.raises(UnknownLeafError, match="leaf 5 does not exist"):
        core.delete(5)
    with pytest.raises(KeyError):
        core.delete(5)
    with pytest.raises(UnknownLeafError, match="leaf 5 is not held"):
        SubscriberCore(ChainModel()).get(5)
    with Publisher(BytesModel(), **endpoint) as pub:
        with pytest.raises(UnknownLeafError):
            pub.get(5)
        with pytest.raises(UnknownLeafError):
            pub.delete(5)


@pytest.mark.parametrize("cls", [Publisher, Subscriber])
def test_an_interface_the_host_lacks_is_named_in_the_error(
        cls: Any, endpoint: dict[str, Any]) -> None:
    with pytest.raises(NetworkError, match=NO_SUCH_INTERFACE) as caught:
        cls(BytesModel(), interface=NO_SUCH_INTERFACE, **endpoint)
    assert caught.value.errno in (errno.EADDRNOTAVAIL, errno.ENODEV)
    assert isinstance(caught.value, OSError)  # code catching OSError still works


def test_the_capture_reader_error_is_in_the_tree() -> None:
    assert issubclass(PcapError, GrapevineError)
    assert issubclass(PcapError, ValueError)
