"""Client-side argument checks: the fast path agrees with the protocol's rules."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from client._connection import parse_hosts
from client._validate import check_path, check_value, check_version, create_mode
from coord.errors import BadArgumentsError
from coord.protocol import CreateMode, validate_path

path_chars = st.sampled_from(list("/.ab-_ 0\x00\x1f\x7f\u00e9\ud7ff\ufff0~:"))


@given(st.text(path_chars, max_size=12))
@example("/")
@example("/.")
@example("/..")
@example("/...")
@example("/a/./b")
@example("/.hidden")
@example("/a/")
@example("//a")
@example("")
def test_check_path_accepts_and_refuses_exactly_what_validate_path_does(path: str) -> None:
    try:
        expected = validate_path(path)
    except BadArgumentsError:
        with pytest.raises(BadArgumentsError):
            check_path(path)
    else:
        assert check_path(path) == expected


def test_check_path_allows_a_trailing_slash_for_sequential_nodes_only() -> None:
    assert check_path("/queue/", sequential=True) == "/queue/"
    with pytest.raises(BadArgumentsError, match="end with"):
        check_path("/queue/")


def test_check_path_refuses_what_is_not_a_string() -> None:
    with pytest.raises(BadArgumentsError, match="string"):
        check_path(b"/a")


def test_check_value_wants_bytes_within_the_limit() -> None:
    assert check_value(b"abc", 3, "/a") == b"abc"
    with pytest.raises(BadArgumentsError, match="must be bytes"):
        check_value("abc", 3, "/a")
    with pytest.raises(BadArgumentsError, match="over the limit"):
        check_value(b"abcd", 3, "/a")


def test_check_version_wants_an_int() -> None:
    assert check_version(-1, "/a") == -1
    with pytest.raises(BadArgumentsError, match="/a"):
        check_version("1", "/a")


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        ({}, CreateMode.PERSISTENT),
        ({"ephemeral": True}, CreateMode.EPHEMERAL),
        ({"sequence": True}, CreateMode.PERSISTENT_SEQUENTIAL),
        ({"ephemeral": True, "sequence": True}, CreateMode.EPHEMERAL_SEQUENTIAL),
        ({"container": True}, CreateMode.CONTAINER),
        ({"ttl": 500}, CreateMode.PERSISTENT_WITH_TTL),
        ({"ttl": 500, "sequence": True}, CreateMode.PERSISTENT_SEQUENTIAL_WITH_TTL),
    ],
)
def test_create_mode_maps_kazoo_flags(flags: dict[str, object], mode: CreateMode) -> None:
    arguments = {"ephemeral": False, "sequence": False, "container": False, "ttl": 0, **flags}
    assert create_mode(path="/a", **arguments) == mode  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "flags",
    [
        {"container": True, "ephemeral": True},
        {"container": True, "sequence": True},
        {"container": True, "ttl": 5},
        {"ephemeral": True, "ttl": 5},
        {"ttl": -1},
    ],
)
def test_create_mode_refuses_combinations_zookeeper_lacks(flags: dict[str, object]) -> None:
    arguments = {"ephemeral": False, "sequence": False, "container": False, "ttl": 0, **flags}
    with pytest.raises(BadArgumentsError):
        create_mode(path="/a", **arguments)  # type: ignore[arg-type]


def test_parse_hosts() -> None:
    assert parse_hosts("127.0.0.1:2281, localhost:2282,example") == [
        ("127.0.0.1", 2281),
        ("localhost", 2282),
        ("example", 2281),
    ]
    assert parse_hosts(["[::1]:9000", "[::1]"]) == [("::1", 9000), ("::1", 2281)]


@pytest.mark.parametrize("hosts", ["", " , ", "h:notaport", "h:0", "h:70000", "h:2181/chroot", "[::1]x"])
def test_parse_hosts_refuses_bad_lists(hosts: str) -> None:
    with pytest.raises(BadArgumentsError):
        parse_hosts(hosts)


@pytest.mark.parametrize("hosts", ["a:1,,b:2", "a:1,", ",a:1", "a:1, ,b:2"])
def test_parse_hosts_refuses_an_empty_entry(hosts: str) -> None:
    with pytest.raises(BadArgumentsError, match="empty entry"):
        parse_hosts(hosts)


@pytest.mark.parametrize("hosts", ["127.0.0.1:70000", "h:0", "[::1]:65536", "h:99999999999999999999"])
def test_parse_hosts_says_the_port_is_out_of_range(hosts: str) -> None:
    with pytest.raises(BadArgumentsError, match=r"port .* out of range \(1\.\.65535\)") as info:
        parse_hosts(hosts)
    assert "bad host" not in str(info.value)


@pytest.mark.parametrize("hosts", ["h:-1", "h:+5", "h:1e3", "h: 5"])
def test_parse_hosts_refuses_ports_that_are_not_plain_numbers(hosts: str) -> None:
    with pytest.raises(BadArgumentsError, match="port must be a number"):
        parse_hosts(hosts)


def test_parse_hosts_can_require_the_port() -> None:
    assert parse_hosts("a:1,[::1]:2", default_port=None) == [("a", 1), ("::1", 2)]
    for hosts in ["garbage", "a:1,b", "[::1]", "::1"]:
        with pytest.raises(BadArgumentsError, match="HOST:PORT"):
            parse_hosts(hosts, default_port=None)
