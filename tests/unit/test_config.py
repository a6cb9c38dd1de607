"""Server configuration: defaults, the TOML file, overrides, and errors that name their key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from coord import config as config_module
from coord.config import (
    ConfigError,
    EnsembleConfig,
    EnsembleMember,
    ServerConfig,
    config_keys,
    format_address,
    load_config,
    parse_listen,
)
from coord.config.security_table import read_peer_secret
from coord.config.settings import TlsConfig

FULL = """\
[server]
id = 3
data_dir = "/var/lib/coord"
listen = "0.0.0.0:3281"
tick_ms = 500
max_connections = 200

[sessions]
min_timeout_ms = 4000
max_timeout_ms = 60000

[storage]
snapshot_every_txns = 5000
snapshots_retained = 5
log_map_bytes = 1048576

[limits]
data_bytes_max = 4096
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coord.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str | None = None, **overrides: object) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=overrides)
    return str(info.value)


# --- what loads ----------------------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    assert load_config() == ServerConfig()


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ServerConfig()


def test_defaults_are_the_documented_ones() -> None:
    config = load_config()
    assert config.data_dir == Path("coord-data")
    assert (config.listen_host, config.listen_port, config.listen) == ("127.0.0.1", 2281, "127.0.0.1:2281")
    assert config.server_id == 1
    assert config.tick_ms == 1000
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (2000, 20000)
    assert config.data_bytes_max == 1 << 20
    assert (config.snapshot_every_txns, config.snapshots_retained, config.log_map_bytes) == (100_000, 3, 1 << 30)
    assert config.max_connections == 10_000
    assert not hasattr(config, "fault_hooks")  # no fault switch in production: coord.testing.faults adds them


def test_full_file_sets_every_field(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, FULL)) == ServerConfig(
        server_id=3,
        data_dir=Path("/var/lib/coord"),
        listen_host="0.0.0.0",
        listen_port=3281,
        tick_ms=500,
        max_connections=200,
        min_session_timeout_ms=4000,
        max_session_timeout_ms=60000,
        snapshot_every_txns=5000,
        snapshots_retained=5,
        log_map_bytes=1048576,
        data_bytes_max=4096,
    )


def test_module_docstring_example_is_a_valid_config_of_the_defaults(tmp_path: Path) -> None:
    doc = config_module.__doc__
    assert doc is not None
    example = doc.split("::\n", 1)[1].split("\nLoading", 1)[0]
    text = "\n".join(line[4:] for line in example.splitlines())
    # [tls] turns TLS on: every other table is at its defaults, this one is shown filled in
    defaults, tls = text.split("\n[tls]", 1)
    assert load_config(write(tmp_path, defaults)) == ServerConfig()
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("-")
    files = re.sub(r'= "(\w+\.\w+)"', rf'= "{tmp_path}/\1"', tls)
    config = load_config(write(tmp_path, defaults + "\n[tls]" + files))
    assert config.tls == TlsConfig(
        cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key", ca_file=tmp_path / "ca.pem"
    )


def test_every_key_appears_in_the_docstring_example() -> None:
    doc = config_module.__doc__
    assert doc is not None
    for dotted in config_keys():
        table, key = dotted.split(".")
        # a key whose value is a table (ensemble.servers) is shown as its own [table.key]
        shown = re.search(rf"^\s+{key} = ", doc, re.MULTILINE) or f"[{dotted}]" in doc
        assert f"[{table}]" in doc and shown, dotted


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, FULL),
        overrides={"server.data_dir": tmp_path / "d", "server.listen": "127.0.0.1:0", "server.id": 2},
    )
    assert config.data_dir == tmp_path / "d"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 0)
    assert config.server_id == 2
    assert config.tick_ms == 500  # the file still counts where nothing overrides it


def test_none_overrides_are_skipped(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), overrides={"server.listen": None, "server.tick_ms": None})
    assert config.listen_port == 3281
    assert config.tick_ms == 500


def test_string_overrides_of_integer_keys_are_parsed() -> None:
    config = load_config(overrides={"server.tick_ms": "250", "limits.data_bytes_max": "1_000"})
    assert config.tick_ms == 250
    assert config.data_bytes_max == 1000


def test_data_dir_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(overrides={"server.data_dir": "~/coord"}).data_dir == tmp_path / "coord"


# --- session bounds --------------------------------------------------------------------


def test_session_bounds_derive_from_tick_ms(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\ntick_ms = 300\n"))
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (600, 6000)


def test_session_bounds_derive_from_an_overridden_tick() -> None:
    config = load_config(overrides={"server.tick_ms": 50})
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (100, 1000)


def test_explicit_session_bound_keeps_the_other_derived(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\ntick_ms = 100\n[sessions]\nmax_timeout_ms = 9000\n"))
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (200, 9000)


def test_explicit_min_above_the_derived_max_raises_the_max() -> None:
    config = load_config(overrides={"sessions.min_timeout_ms": 30_000})
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (30_000, 30_000)


def test_explicit_max_below_the_derived_min_lowers_the_min() -> None:
    config = load_config(overrides={"sessions.max_timeout_ms": 1500})
    assert (config.min_session_timeout_ms, config.max_session_timeout_ms) == (1500, 1500)


def test_explicit_min_above_explicit_max_is_an_error() -> None:
    message = error_of(Path(), None, **{"sessions.min_timeout_ms": 5000, "sessions.max_timeout_ms": 4000})
    assert message.startswith("sessions.min_timeout_ms:")
    assert "sessions.max_timeout_ms" in message and "5000" in message and "4000" in message


# --- errors name their key -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ('[server]\ntick_ms = "abc"\n', "server.tick_ms", "'abc'"),
        ("[server]\ntick_ms = 0\n", "server.tick_ms", "0"),
        ("[server]\ntick_ms = 1.5\n", "server.tick_ms", "1.5"),
        ("[server]\ntick_ms = true\n", "server.tick_ms", "True"),
        ("[server]\nid = 0\n", "server.id", "0"),
        ("[server]\nid = 256\n", "server.id", "256"),
        ("[server]\nmax_connections = -1\n", "server.max_connections", "-1"),
        ("[server]\ndata_dir = 5\n", "server.data_dir", "5"),
        ('[server]\ndata_dir = ""\n', "server.data_dir", "''"),
        ("[server]\nlisten = 2281\n", "server.listen", "2281"),
        ('[server]\nlisten = "localhost"\n', "server.listen", "'localhost'"),
        ('[server]\nlisten = "localhost:http"\n', "server.listen", "'http'"),
        ('[server]\nlisten = "localhost:70000"\n', "server.listen", "70000"),
        ("[sessions]\nmin_timeout_ms = -5\n", "sessions.min_timeout_ms", "-5"),
        ('[sessions]\nmax_timeout_ms = "10s"\n', "sessions.max_timeout_ms", "'10s'"),
        ("[storage]\nsnapshot_every_txns = 0\n", "storage.snapshot_every_txns", "0"),
        ("[storage]\nsnapshots_retained = 0\n", "storage.snapshots_retained", "0"),
        ("[storage]\nlog_map_bytes = [1]\n", "storage.log_map_bytes", "[1]"),
        ("[limits]\ndata_bytes_max = 0\n", "limits.data_bytes_max", "0"),
        ("[limits]\ndata_bytes_max = 5000000000\n", "limits.data_bytes_max", "5000000000"),
        ("server = 3\n", "server", "3"),
    ],
)
def test_bad_value_error_names_the_key_and_the_value(tmp_path: Path, text: str, key: str, shown: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert shown in message


def test_bad_override_error_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^server\.tick_ms: must be a positive integer, got 'abc'$"):
        load_config(overrides={"server.tick_ms": "abc"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\ntick_msec = 10\n", "server.tick_msec: unknown key (did you mean 'server.tick_ms'?)"),
        ("[server]\nlisten_port = 10\n", "server.listen_port: unknown key (did you mean 'server.listen'?)"),
        (
            "[server]\nmin_timeout_ms = 10\n",
            "server.min_timeout_ms: unknown key (did you mean 'sessions.min_timeout_ms'?)",
        ),
        ("[sesions]\nmin_timeout_ms = 10\n", "sesions: unknown table (did you mean [sessions]?)"),
        ("[server]\nflux_capacitor = 1\n", "server.flux_capacitor: unknown key"),
        ("[server]\nport = 2281\n", "server.port: unknown key (did you mean 'server.listen'?)"),
        ("[gizmos]\nx = 1\n", "gizmos: unknown table"),
        ("[server]\nfault_hooks = true\n", "server.fault_hooks: unknown key"),
    ],
)
def test_unknown_names_are_refused_with_a_suggestion_when_close(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_unknown_override_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"^server\.lisen: unknown key \(did you mean 'server\.listen'\?\)$"):
        load_config(overrides={"server.lisen": "127.0.0.1:0"})


def test_undotted_override_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^listen: overrides take dotted keys"):
        load_config(overrides={"listen": "127.0.0.1:0"})


def test_missing_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config(path)


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[server]\nid = 1\ntick_ms = = 3\n")
    assert message.startswith(f"{tmp_path / 'coord.toml'}: invalid TOML")
    assert "line 3" in message


def test_non_utf8_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "coord.toml"
    path.write_bytes(b"[server]\nid = 1 # \xff\n")
    with pytest.raises(ConfigError, match=r"coord\.toml: invalid TOML"):
        load_config(path)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config().tick_ms = 5  # type: ignore[misc]


# --- parse_listen ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:2281", ("127.0.0.1", 2281)),
        ("example.com:80", ("example.com", 80)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:2281", ("::1", 2281)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
        (":2281", ("127.0.0.1", 2281)),
    ],
)
def test_parse_listen_accepts_the_documented_shapes(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value", ["", "host", "host:", "host:-1", "host:65536", "host:1x", "::1:2281", "[::1]", "[::1]2281", "[]:1", "h:٣"]
)
def test_parse_listen_refuses_other_shapes(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_listen_property_round_trips_through_parse_listen() -> None:
    for host in ("127.0.0.1", "::1"):
        config = ServerConfig(listen_host=host, listen_port=7)
        assert parse_listen(config.listen) == (host, 7)


# --- [ensemble] ---------------------------------------------------------------------------

ENSEMBLE = """\
[ensemble]
tick_ms = 50
init_limit_ticks = 30
sync_limit_ticks = 7

[ensemble.servers]
1 = { peer = "127.0.0.1:2888", client = "127.0.0.1:2281" }
2 = { peer = "127.0.0.1:2889", client = "127.0.0.1:2282" }
3 = { peer = "127.0.0.1:2890", client = "127.0.0.1:2283" }
"""

SERVERS_ONLY = """\
[ensemble.servers]
1 = { peer = "127.0.0.1:2888", client = "127.0.0.1:2281" }
2 = { peer = "127.0.0.1:2889", client = "127.0.0.1:2282" }
3 = { peer = "127.0.0.1:2890", client = "127.0.0.1:2283" }
"""


def ensemble_doc_example() -> str:
    doc = config_module.__doc__
    assert doc is not None
    example = doc.split("::\n", 2)[2].split("\nIds are", 1)[0]
    return "\n".join(line[4:] for line in example.splitlines())


def test_without_an_ensemble_table_the_server_is_standalone() -> None:
    assert load_config().ensemble is None


def test_ensemble_table_sets_every_field(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\nid = 2\n" + ENSEMBLE))
    assert config.ensemble == EnsembleConfig(
        servers={
            1: EnsembleMember(peer=("127.0.0.1", 2888), client=("127.0.0.1", 2281)),
            2: EnsembleMember(peer=("127.0.0.1", 2889), client=("127.0.0.1", 2282)),
            3: EnsembleMember(peer=("127.0.0.1", 2890), client=("127.0.0.1", 2283)),
        },
        tick_ms=50,
        init_limit_ticks=30,
        sync_limit_ticks=7,
    )
    assert config.server_id == 2
    assert config.ensemble.voters == (1, 2, 3)
    assert config.ensemble.peers == {1: ("127.0.0.1", 2888), 2: ("127.0.0.1", 2889), 3: ("127.0.0.1", 2890)}


def test_ensemble_timing_has_documented_defaults(tmp_path: Path) -> None:
    ensemble = load_config(write(tmp_path, SERVERS_ONLY)).ensemble
    assert ensemble is not None
    assert (ensemble.tick_ms, ensemble.init_limit_ticks, ensemble.sync_limit_ticks) == (100, 20, 5)


def test_ensemble_docstring_example_loads_with_the_default_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "peer.secret").write_bytes(b"0123456789abcdef0123456789abcdef\n")
    (tmp_path / "peer.secret").chmod(0o600)
    config = load_config(write(tmp_path, ensemble_doc_example()))
    assert config.ensemble is not None
    assert config.ensemble.secret_file == Path("peer.secret") and config.ensemble.peer_auth == "secret"
    assert config.ensemble.voters == (1, 2, 3)
    assert (config.ensemble.tick_ms, config.ensemble.init_limit_ticks, config.ensemble.sync_limit_ticks) == (
        100,
        20,
        5,
    )
    assert config.listen == "10.0.0.1:2281"


def test_listen_defaults_to_this_members_client_address(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\nid = 3\n" + SERVERS_ONLY))
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 2283)


def test_explicit_listen_wins_over_the_members_client_address(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[server]\nid = 3\nlisten = "0.0.0.0:2283"\n' + SERVERS_ONLY))
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 2283)
    config = load_config(write(tmp_path, SERVERS_ONLY), overrides={"server.listen": "127.0.0.1:0"})
    assert config.listen_port == 0


def test_server_id_override_picks_the_member(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SERVERS_ONLY), overrides={"server.id": "2"})
    assert (config.server_id, config.listen_port) == (2, 2282)


def test_ensemble_of_one_and_even_counts_are_accepted(tmp_path: Path) -> None:
    one = '[ensemble.servers]\n1 = { peer = "127.0.0.1:2888", client = "127.0.0.1:2281" }\n'
    assert load_config(write(tmp_path, one)).ensemble is not None
    two = one + '2 = { peer = "127.0.0.1:2889", client = "127.0.0.1:2282" }\n'
    ensemble = load_config(write(tmp_path, two)).ensemble
    assert ensemble is not None and ensemble.voters == (1, 2)


def test_members_may_be_written_as_subtables_and_ipv6(tmp_path: Path) -> None:
    text = '[ensemble.servers.7]\npeer = "[::1]:2888"\nclient = "[::1]:2281"\n'
    config = load_config(write(tmp_path, "[server]\nid = 7\n" + text))
    assert config.ensemble is not None
    assert config.ensemble.servers == {7: EnsembleMember(peer=("::1", 2888), client=("::1", 2281))}
    assert config.listen == "[::1]:2281"


def test_ensemble_overrides_parse_integers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ENSEMBLE), overrides={"ensemble.tick_ms": "20"})
    assert config.ensemble is not None and config.ensemble.tick_ms == 20


def test_ensemble_servers_can_come_from_an_override() -> None:
    servers = {"1": {"peer": "127.0.0.1:3888", "client": "127.0.0.1:3281"}}
    config = load_config(overrides={"ensemble.servers": servers})
    assert config.ensemble is not None and config.ensemble.peers == {1: ("127.0.0.1", 3888)}


def test_ensemble_id_is_a_sha256_digest_of_the_membership(tmp_path: Path) -> None:
    ensemble = load_config(write(tmp_path, ENSEMBLE)).ensemble
    assert ensemble is not None
    assert isinstance(ensemble.ensemble_id, bytes) and len(ensemble.ensemble_id) == 32


def test_ensemble_id_ignores_order_timing_and_client_addresses(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, ENSEMBLE)).ensemble
    reordered = "[ensemble.servers]\n" + "\n".join(reversed(SERVERS_ONLY.splitlines()[1:])) + "\n"
    b = load_config(write(tmp_path, reordered.replace("228", "338"))).ensemble
    assert a is not None and b is not None and a != b
    assert a.ensemble_id == b.ensemble_id


def test_ensemble_id_changes_with_the_members_and_their_peer_addresses(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, SERVERS_ONLY)).ensemble
    moved = load_config(write(tmp_path, SERVERS_ONLY.replace("2890", "2990"))).ensemble
    fewer = load_config(write(tmp_path, SERVERS_ONLY.rsplit("3 =", 1)[0])).ensemble
    renumbered = load_config(write(tmp_path, SERVERS_ONLY.replace("3 =", "4 ="))).ensemble
    assert base is not None and moved is not None and fewer is not None and renumbered is not None
    assert len({base.ensemble_id, moved.ensemble_id, fewer.ensemble_id, renumbered.ensemble_id}) == 4


def test_format_address_round_trips_through_parse_listen() -> None:
    for address in [("127.0.0.1", 2888), ("::1", 1), ("example.com", 80)]:
        assert parse_listen(format_address(address)) == address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nid = 4\n" + SERVERS_ONLY, "server.id: 4 is not in ensemble.servers (1, 2, 3)"),
        ("[ensemble]\n", "ensemble.servers: required in [ensemble]"),
        ("[ensemble]\ntick_ms = 100\n", "ensemble.servers: required in [ensemble]"),
        ("[ensemble]\nservers = []\n", "ensemble.servers: must be a table of ID = "),
        ("[ensemble]\nservers = {}\n", "ensemble.servers: must list at least one server"),
        ('[ensemble.servers]\n0 = { peer = "h:1", client = "h:2" }\n', "ensemble.servers.0: a server id must be"),
        ('[ensemble.servers]\n256 = { peer = "h:1", client = "h:2" }\n', "ensemble.servers.256: a server id must"),
        ('[ensemble.servers]\n01 = { peer = "h:1", client = "h:2" }\n', "ensemble.servers.01: a server id must be"),
        ('[ensemble.servers]\n-1 = { peer = "h:1", client = "h:2" }\n', "ensemble.servers.-1: a server id must be"),
        ('[ensemble.servers]\none = { peer = "h:1", client = "h:2" }\n', "ensemble.servers.one: a server id must"),
        ('[ensemble.servers]\n1 = "h:1"\n', "ensemble.servers.1: must be a table { peer = 'HOST:PORT'"),
        ('[ensemble.servers]\n1 = { peer = "h:1" }\n', "ensemble.servers.1.client: required"),
        ('[ensemble.servers]\n1 = { client = "h:1" }\n', "ensemble.servers.1.peer: required"),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:2", pear = "h:3" }\n',
            "ensemble.servers.1.pear: unknown key (did you mean 'peer'?)",
        ),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:2", weight = 1 }\n',
            "ensemble.servers.1.weight: unknown key (expected 'peer' and 'client')",
        ),
        ('[ensemble.servers]\n1 = { peer = "h", client = "h:2" }\n', "ensemble.servers.1.peer: expected 'HOST:PORT'"),
        ('[ensemble.servers]\n1 = { peer = 2888, client = "h:2" }\n', "ensemble.servers.1.peer: must be a non-empty"),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:99999" }\n',
            "ensemble.servers.1.client: port must be in 0..65535, got 99999",
        ),
        ('[ensemble.servers]\n1 = { peer = "h:0", client = "h:2" }\n', "ensemble.servers.1.peer: port 0 is not"),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:1" }\n',
            "ensemble.servers.1.client: h:1 is already used by ensemble.servers.1.peer",
        ),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:2" }\n2 = { peer = "H:1", client = "h:3" }\n',
            "ensemble.servers.2.peer: H:1 is already used by ensemble.servers.1.peer",
        ),
        (
            '[ensemble.servers]\n1 = { peer = "h:1", client = "h:2" }\n2 = { peer = "h:3", client = "h:2" }\n',
            "ensemble.servers.2.client: h:2 is already used by ensemble.servers.1.client",
        ),
        ("[ensemble]\ntick_ms = 0\n" + SERVERS_ONLY, "ensemble.tick_ms: must be a positive integer, got 0"),
        ('[ensemble]\ninit_limit_ticks = "x"\n', "ensemble.init_limit_ticks: must be a positive integer, got 'x'"),
        ("[ensemble]\nsync_limit_ticks = -1\n", "ensemble.sync_limit_ticks: must be a positive integer, got -1"),
        ("[ensemble]\nserver = {}\n", "ensemble.server: unknown key (did you mean 'ensemble.servers'?)"),
        (
            "[ensemble]\nsync_limit = 5\n",
            "ensemble.sync_limit: unknown key (did you mean 'ensemble.sync_limit_ticks'?)",
        ),
        (
            "[server]\ninit_limit_ticks = 5\n",
            "server.init_limit_ticks: unknown key (did you mean 'ensemble.init_limit_ticks'?)",
        ),
        ("ensemble = 3\n", "ensemble: must be a table ([ensemble]), got 3"),
    ],
)
def test_bad_ensemble_error_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).startswith(expected)


def test_default_server_id_must_be_a_member_too(tmp_path: Path) -> None:
    text = SERVERS_ONLY.replace("1 =", "5 =")
    assert error_of(tmp_path, text) == "server.id: 1 is not in ensemble.servers (2, 3, 5)"


def test_ensemble_keys_are_listed() -> None:
    keys = config_keys()
    for key in ["ensemble.tick_ms", "ensemble.init_limit_ticks", "ensemble.sync_limit_ticks", "ensemble.servers"]:
        assert key in keys


# --- the security keys -------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("-")
    return tmp_path


BOTH = 'cert_file = "{d}/server.pem"\nkey_file = "{d}/server.key"\n'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('key_file = "{d}/server.key"', r"tls.cert_file: required in \[tls\]"),
        ('cert_file = "{d}/server.pem"', r"tls.key_file: required in \[tls\]"),
        ('cert_file = "{d}/missing.pem"\nkey_file = "{d}/server.key"', "tls.cert_file: cannot read .*missing.pem"),
        (BOTH + 'client_auth = "yes"', "tls.client_auth: must be one of"),
        (BOTH + 'client_auth = "required"', "tls.ca_file: required with client_auth = 'required'"),
        (BOTH + "peers = true", "tls.ca_file: required with peers = true"),
        (BOTH + "peers = 1", "tls.peers: must be true or false"),
        ("", "tls.cert_file: required in"),
    ],
)
def test_a_wrong_tls_table_is_refused_naming_the_key(certs: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(certs, "[tls]\n" + table.format(d=certs) + "\n"))


def test_tls_settings_load(certs: Path) -> None:
    text = f'[tls]\ncert_file = "{certs}/server.pem"\nkey_file = "{certs}/server.key"\nca_file = "{certs}/ca.pem"\n'
    config = load_config(write(certs, text + 'client_auth = "optional"\npeers = true\n'))
    assert config.tls == TlsConfig(
        cert_file=certs / "server.pem",
        key_file=certs / "server.key",
        ca_file=certs / "ca.pem",
        client_auth="optional",
        peers=True,
    )
    assert load_config(write(certs, text), overrides={"tls.peers": "true"}).tls.peers  # type: ignore[union-attr]
    assert load_config().tls is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "holds 0 bytes"),
        (b"  short secret  \n", "holds 12 bytes; a peer secret needs at least 16"),
    ],
)
def test_a_missing_or_short_peer_secret_is_refused(tmp_path: Path, content: bytes | None, message: str) -> None:
    secret = tmp_path / "peer.secret"
    if content is not None:
        secret.write_bytes(content)
    with pytest.raises(ConfigError, match=f"ensemble.secret_file: .*{message}"):
        load_config(write(tmp_path, f'[ensemble]\nsecret_file = "{secret}"\n' + SERVERS_ONLY))


def test_a_peer_secret_others_can_read_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "peer.secret"
    secret.write_bytes(b"0123456789abcdef")
    secret.chmod(0o644)
    body = SERVERS_ONLY
    config = load_config(write(tmp_path, f'[ensemble]\nsecret_file = "{secret}"\n' + body))
    assert config.ensemble is not None and config.ensemble.secret_file == secret
    assert "can be read by other users" in caplog.text
    secret.chmod(0o600)
    caplog.clear()
    load_config(write(tmp_path, f'[ensemble]\nsecret_file = "{secret}"\n' + body))
    assert "other users" not in caplog.text
    assert read_peer_secret(secret) == b"0123456789abcdef"
