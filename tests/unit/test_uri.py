"""amqp:// and amqps:// URIs as RabbitMQ documents them; the password never shows."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.errors import InvalidURI, ProtocolError
from protocol.uri import ConnectionParameters, TLSOptions, parse_uri

PASSWORD = "Sup3r-s3cret"


def test_amqp_defaults():
    params = parse_uri("amqp://")
    assert params == ConnectionParameters()
    assert (params.host, params.port, params.vhost) == ("localhost", 5672, "/")
    assert (params.username, params.password) == ("guest", "guest")
    assert (params.heartbeat, params.frame_max, params.channel_max) == (60, 131072, 2047)
    assert params.connection_timeout == 10.0
    assert params.mechanism == "PLAIN"
    assert params.tls is None


def test_amqps_defaults():
    params = parse_uri("amqps://broker.example.com")
    assert params.port == 5671
    assert params.tls == TLSOptions(server_name="broker.example.com", verify=True)


@pytest.mark.parametrize(
    ("uri", "vhost"),
    [
        ("amqp://h", "/"),
        ("amqp://h/", "/"),
        ("amqp://h/%2F", "/"),
        ("amqp://h/%2f", "/"),
        ("amqp://h/archive", "archive"),
        ("amqp://h/team%2Farchive", "team/archive"),
        ("amqp://h/w%C3%B6rk", "wörk"),
        ("amqp://h/a%20b", "a b"),
    ],
)
def test_vhost(uri, vhost):
    assert parse_uri(uri).vhost == vhost


def test_full_uri():
    params = parse_uri(f"amqp://archiver:{PASSWORD}@rabbit-1.internal:5673/prod")
    assert (params.username, params.password) == ("archiver", PASSWORD)
    assert (params.host, params.port, params.vhost) == ("rabbit-1.internal", 5673, "prod")


def test_percent_encoded_user_and_password():
    params = parse_uri("amqp://us%40er%3Aname:p%40ss%3Aw%2Ford%25%23%3F@host/")
    assert params.username == "us@er:name"
    assert params.password == "p@ss:w/ord%#?"


def test_user_without_password():
    params = parse_uri("amqp://someone@host")
    assert (params.username, params.password) == ("someone", "guest")


def test_empty_password():
    assert parse_uri("amqp://someone:@host").password == ""


def test_ipv6_host():
    params = parse_uri("amqp://[::1]:5680/")
    assert (params.host, params.port) == ("::1", 5680)


def test_scheme_is_case_insensitive():
    assert parse_uri("AMQPS://h").tls is not None


def test_query_options():
    params = parse_uri(
        "amqp://h/?heartbeat=30&frame_max=65536&channel_max=64&connection_timeout=2500&auth_mechanism=amqplain"
    )
    assert (params.heartbeat, params.frame_max, params.channel_max) == (30, 65536, 64)
    assert params.connection_timeout == 2.5  # milliseconds in the URI, seconds here
    assert params.mechanism == "AMQPLAIN"


def test_heartbeat_zero_turns_heartbeats_off():
    assert parse_uri("amqp://h?heartbeat=0").heartbeat == 0


def test_zero_frame_max_and_channel_max_mean_defaults():
    params = parse_uri("amqp://h?frame_max=0&channel_max=0")
    assert (params.frame_max, params.channel_max) == (131072, 2047)


def test_last_repeated_option_wins():
    assert parse_uri("amqp://h?heartbeat=5&heartbeat=7").heartbeat == 7


def test_tls_options():
    params = parse_uri(
        "amqps://u:p@10.0.0.5/?cacertfile=/etc/ssl/ca.pem&certfile=/etc/ssl/client.pem"
        "&keyfile=/etc/ssl/key.pem&verify=verify_peer&server_name_indication=rabbit.example.com"
    )
    assert params.tls == TLSOptions(
        cafile="/etc/ssl/ca.pem",
        certfile="/etc/ssl/client.pem",
        keyfile="/etc/ssl/key.pem",
        server_name="rabbit.example.com",
        verify=True,
    )


def test_tls_verify_none():
    tls = parse_uri("amqps://h?verify=verify_none").tls
    assert tls is not None
    assert tls.verify is False
    ctx = tls.context()
    assert ctx.check_hostname is False


def test_tls_percent_encoded_path():
    assert parse_uri("amqps://h?cacertfile=%2Fpath%20with%20space%2Fca.pem").tls.cafile == "/path with space/ca.pem"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("http://h/", "scheme"),
        ("rabbitmq://h/", "scheme"),
        ("amqp://h/a/b", "%2F"),
        ("amqp://h/?heartbeat=soon", "heartbeat"),
        ("amqp://h/?heartbeat=", "heartbeat"),
        ("amqp://h/?heartbeat=-1", "negative"),
        ("amqp://h/?frame_max=big", "frame_max"),
        ("amqp://h/?channel_max=1.5", "channel_max"),
        ("amqp://h/?connection_timeout=later", "connection_timeout"),
        ("amqp://h/?auth_mechanism=external", "auth_mechanism"),
        ("amqp://h/?hearbeat=10", "hearbeat"),
        ("amqp://h/?cacertfile=/ca.pem", "amqps"),
        ("amqp://h/?verify=verify_none", "amqps"),
        ("amqps://h/?verify=yes", "verify"),
        ("amqp://h:99999/", "port"),
        ("amqp://h:port/", "port"),
        ("amqp://[::1/", "URI"),
    ],
)
def test_bad_uri_says_what_is_wrong(uri, complaint):
    with pytest.raises(InvalidURI) as info:
        parse_uri(uri)
    assert complaint.lower() in str(info.value).lower()
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(
    "uri",
    [
        f"ftp://user:{PASSWORD}@h/",
        f"amqp://user:{PASSWORD}@h/a/b",
        f"amqp://user:{PASSWORD}@h/?heartbeat=x",
        f"amqp://user:{PASSWORD}@h/?nope=1",
        f"amqp://user:{PASSWORD}@h/?auth_mechanism=foo",
        f"amqp://user:{PASSWORD}@h/?connection_timeout=x",
        f"amqp://user:{PASSWORD}@h/?certfile=c.pem",
        f"amqps://user:{PASSWORD}@h/?verify=maybe",
        f"amqp://user:{PASSWORD}@h:99999/",
        f"amqp://user:{PASSWORD}@h:x/",
    ],
)
def test_invalid_uri_errors_never_contain_the_password(uri):
    with pytest.raises(InvalidURI) as info:
        parse_uri(uri)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)
    assert "user@h" in str(info.value) or "port" in str(info.value).lower()


@pytest.mark.parametrize("separator", ["/", "?", "#"])
def test_password_with_an_unencoded_delimiter_is_not_leaked(separator):
    with pytest.raises(InvalidURI) as info:
        parse_uri(f"amqp://user:{PASSWORD}{separator}x@host/")
    assert PASSWORD not in str(info.value)


def test_redacted_and_repr_never_contain_the_password():
    params = parse_uri(f"amqps://archiver:{PASSWORD}@rabbit:5671/prod?heartbeat=5")
    for text in (params.redacted(), str(params), repr(params), f"{params}", f"{params!r}"):
        assert PASSWORD not in text
    assert params.redacted() == "amqps://archiver@rabbit:5671/prod"
    assert parse_uri("amqp://u:p@h").redacted() == "amqp://u@h:5672/%2F"


def test_password_is_not_part_of_repr_even_when_replaced():
    params = dataclasses.replace(ConnectionParameters(), password=PASSWORD)
    assert PASSWORD not in repr(params)
    assert params.password == PASSWORD
