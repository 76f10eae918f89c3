"""Stream names on the stream protocol's wire: every string rstream sends (stream, vhost, connection,
consumer and producer names) is sized in UTF-8 bytes, so any name decodes back whole; and the replay
producer's name stays within the 255 bytes the broker's deduplication can track."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rstream import encoding, schema
from rstream.constants import T

from bridge.replay.stream_target import publisher_name
from protocol import stream  # noqa: F401  (importing it is what corrects rstream's string sizes)
from protocol.stream.rstream_strings import size_strings_in_bytes

NAMES = ["events", "events ü/ß 1.x", "warren/test", "注文/キュー 🐇", ("ü/" * 85)[:255]]
names = st.text(max_size=120)


def round_trip(frame: schema.Frame) -> schema.Frame:
    data = encoding.encode_frame(frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    return encoding.decode_frame(data[4:])


@pytest.mark.parametrize("name", NAMES)
def test_every_frame_we_send_with_a_name_decodes_back_to_the_same_name(name):
    frames = [
        schema.Open(correlation_id=1, virtual_host=name),
        schema.PeerProperties(correlation_id=2, properties=[schema.Property("connection_name", f"warren: {name}")]),
        schema.Metadata(correlation_id=3, streams=[name, "other"]),
        schema.DeclarePublisher(correlation_id=4, publisher_id=1, reference=publisher_name(name), stream=name),
        schema.StoreOffset(reference="warren-archiver", stream=name, offset=42),
        schema.QueryOffset(correlation_id=5, reference="warren-archiver", stream=name),
    ]
    for frame in frames:
        assert round_trip(frame) == frame


@given(vhost=names, name=names)
def test_any_unicode_name_decodes_back(vhost, name):
    frame = schema.DeclarePublisher(correlation_id=1, publisher_id=0, reference=vhost, stream=name)
    assert round_trip(frame) == frame


def test_the_correction_is_applied_once_and_changes_nothing_for_ascii():
    size_strings_in_bytes()
    size_strings_in_bytes()
    assert bytes(encoding._encode_field("abc", T.string)) == b"\x00\x03abc"
    assert bytes(encoding._encode_field("é", T.string)) == b"\x00\x02\xc3\xa9"


def test_the_replay_producer_keeps_its_name_for_names_that_fit():
    """Publisher deduplication is by this name: a rerun (or an older warren) must use the same one."""
    assert publisher_name("events ü/ß 1.x") == "warren-replay:events ü/ß 1.x"


@given(name=st.text(min_size=1, max_size=255).map(lambda s: s.encode()[:255].decode("utf-8", "ignore")))
def test_the_replay_producer_name_fits_the_255_bytes_the_broker_tracks_and_is_never_shared(name):
    # A longer one is not refused by RabbitMQ 3.10: it breaks the stream's tracking (its writer crashes).
    assert len(publisher_name(name).encode()) <= 255
    assert publisher_name(name) != publisher_name(name + "x")
