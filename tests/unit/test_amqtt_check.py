"""The embedded broker refuses an amqtt that lacks what its patches use, naming it."""

from __future__ import annotations

import logging
from importlib import metadata
from types import SimpleNamespace

import pytest
from amqtt.broker import Broker

from mesh.edge.broker import _amqtt_sessions
from mesh.edge.broker._amqtt_sessions import AMQTT_SERIES, check_amqtt, require_attributes
from mesh.edge.broker._broker import BrokerStartError


class _Handler:
    """A stand-in for an amqtt class whose QoS 1 flow was renamed."""

    async def _handle_qos1_message_flow_v2(self) -> None: ...


def test_a_missing_attribute_is_named_with_the_version() -> None:
    with pytest.raises(BrokerStartError) as caught:
        require_attributes("0.99.0", [(_Handler, "_handle_qos1_message_flow")])
    message = str(caught.value)
    assert "amqtt 0.99.0 has no _Handler._handle_qos1_message_flow" in message
    assert f"written for amqtt {AMQTT_SERIES}.x" in message


def test_every_missing_attribute_is_named_and_instances_by_their_class() -> None:
    session = SimpleNamespace(clean_session=True)
    with pytest.raises(
        BrokerStartError, match=r"has no SimpleNamespace\.is_anonymous, _Handler\.x,"
    ):
        require_attributes(
            "0.13.0", [(session, "clean_session"), (session, "is_anonymous"), (_Handler, "x")]
        )


def test_present_attributes_pass() -> None:
    require_attributes("0.12.1", [(_Handler, "_handle_qos1_message_flow_v2")])


def test_the_installed_amqtt_has_everything(caplog: pytest.LogCaptureFixture) -> None:
    assert metadata.version("amqtt").startswith(f"{AMQTT_SERIES}.")
    with caplog.at_level(logging.WARNING):
        check_amqtt()
    assert not caplog.records


def test_an_amqtt_without_an_overridden_method_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Broker, "stream_connected")
    with pytest.raises(BrokerStartError, match=r"amqtt \S+ has no Broker\.stream_connected"):
        check_amqtt()


def test_another_series_with_every_attribute_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_amqtt_sessions.metadata, "version", lambda _: "0.13.0")
    with caplog.at_level(logging.WARNING):
        check_amqtt()
    assert "amqtt 0.13.0 is not the 0.12.x" in caplog.text


def test_bound_port_names_a_missing_server_table() -> None:
    with pytest.raises(BrokerStartError, match=r"has no SimpleNamespace\._servers"):
        _amqtt_sessions.bound_port(SimpleNamespace(), "default")
