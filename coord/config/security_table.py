"""The security keys: the ``[tls]`` table and ``[ensemble] secret_file``, checked at load.

A security setting that is wrong must stop the server at start, naming the key, not
surface later as a refused handshake: a certificate or key file that cannot be read,
a client-certificate mode that is not one of the three, peers or client certificates
to verify without a CA to verify them against, a peer secret that is missing, empty
or too short to resist guessing. Paths are taken as written (relative ones from the
server's working directory, as ``server.data_dir``), with ``~`` expanded.

Loading reads the files only to check them; the server reads them again when it
builds its TLS contexts (:mod:`coord.tls`) and when its peer transport starts, and
again on SIGHUP for certificates, so that they can be replaced without a restart.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from coord.config.settings import TlsConfig
from coord.config.value_checks import ConfigError, _describe, _string

log = logging.getLogger("coord.config")

CLIENT_AUTH_MODES: Final = ("none", "optional", "required")
SECRET_BYTES_MIN: Final = 16
"""The shortest peer secret accepted: 16 bytes (128 bits if random; `openssl rand -hex 32` makes 64)."""


def _path(key: str, value: object) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return Path(_string(key, value)).expanduser()


def _readable(key: str, path: Path) -> Path:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror or error}") from None
    return path


def _check_file(name: str) -> Callable[[str, object], dict[str, object]]:
    def check(key: str, value: object) -> dict[str, object]:
        return {name: _readable(key, _path(key, value))}

    return check


def _check_client_auth(key: str, value: object) -> dict[str, object]:
    if value not in CLIENT_AUTH_MODES:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, CLIENT_AUTH_MODES))}, got {_describe(value)}")
    return {"tls_client_auth": value}


def _check_peers(key: str, value: object) -> dict[str, object]:
    if type(value) is not bool:
        if value in ("true", "false"):  # from a command-line override
            return {"tls_peers": value == "true"}
        raise ConfigError(f"{key}: must be true or false, got {_describe(value)}")
    return {"tls_peers": value}


def build_tls(values: dict[str, object]) -> TlsConfig:
    """Take the ``tls_*`` values out of ``values`` and build the TlsConfig (``[tls]`` was given)."""
    cert = values.pop("tls_cert_file", None)
    key = values.pop("tls_key_file", None)
    ca = values.pop("tls_ca_file", None)
    client_auth = values.pop("tls_client_auth", "none")
    peers = values.pop("tls_peers", False)
    if cert is None or key is None:
        missing = "tls.cert_file" if cert is None else "tls.key_file"
        raise ConfigError(f"{missing}: required in [tls] (this server's certificate chain and its private key)")
    if ca is None and (client_auth != "none" or peers):
        why = "peers = true" if peers else f"client_auth = {client_auth!r}"
        raise ConfigError(f"tls.ca_file: required with {why} (the CA that certificates are verified against)")
    assert isinstance(cert, Path) and isinstance(key, Path) and isinstance(client_auth, str)
    assert ca is None or isinstance(ca, Path)
    return TlsConfig(cert_file=cert, key_file=key, ca_file=ca, client_auth=client_auth, peers=bool(peers))


def check_secret_file(key: str, value: object) -> dict[str, object]:
    """``ensemble.secret_file``: a readable file holding at least SECRET_BYTES_MIN bytes."""
    path = _path(key, value)
    read_peer_secret(path, key=key)
    return {"ensemble_secret_file": path}


def read_peer_secret(path: Path, *, key: str = "ensemble.secret_file") -> bytes:
    """The ensemble's shared peer secret: the file's bytes, surrounding whitespace removed.

    Warns (once per read) when the file can be read by other users: anyone who reads
    it can join the ensemble as a server.

    Raises:
        ConfigError: the file cannot be read, or holds fewer than SECRET_BYTES_MIN bytes.
    """
    try:
        secret = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror or error}") from None
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(
            f"{key}: {path} holds {len(secret)} bytes; a peer secret needs at least {SECRET_BYTES_MIN} "
            "(make one with `openssl rand -hex 32 > FILE`)"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s: %s can be read by other users, who could then join as a server (chmod 600)", key, path)
    return secret


__all__ = ["CLIENT_AUTH_MODES", "SECRET_BYTES_MIN", "build_tls", "check_secret_file", "read_peer_secret"]
