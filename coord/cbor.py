"""The strict CBOR decoder every input of the service goes through.

Client frames (:func:`coord.protocol.decode_body`) and peer messages
(:func:`coord.zab.codec.decode_message`) are inputs like any other (docs/correctness.md,
"Hostile input"), so both decode with the same rules: exactly one CBOR item and no
trailing bytes, no CBOR tags at all (cbor2 would otherwise build datetimes, bignums,
decimals, sets ... before any ``tag_hook`` sees them), a bounded nesting depth,
hashable map keys only and no duplicate keys. Whatever cbor2 raises on the way
(including a RecursionError or MemoryError from a hostile length) becomes one
:class:`StrictCBORError`, which each caller maps to its own error.

Validating the item's shape is the caller's job, not this one's.
"""

from __future__ import annotations

import io
from typing import Any, Final, NoReturn

import cbor2


class StrictCBORError(ValueError):
    """The data is not exactly one acceptable CBOR item.

    Attributes:
        stray: how many bytes followed a well-formed item (0 when the item itself
            was refused), so that a caller can word that case its own way.
    """

    def __init__(self, message: str, *, stray: int = 0) -> None:
        super().__init__(message)
        self.stray = stray


def _refuse_tag(decoder: Any, tag: Any = None) -> NoReturn:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


# cbor2 decodes these tags itself (datetimes, bignums, decimals, sets, ...) before any
# tag_hook sees them; map every one we know of, and all small numbers, to a refusal.
_REFUSED_TAGS: Final = {
    tag: _refuse_tag for tag in [*range(0, 1024), 1004, 1040, 1041, 43000, 52, 54, 55799, 55800, 55801]
}


def decode_strict(data: bytes, *, max_depth: int) -> Any:
    """Decode ``data`` as exactly one CBOR item, nested at most ``max_depth`` deep.

    Raises:
        StrictCBORError: ``malformed CBOR: ...`` when cbor2 refused the item (a tag,
            too deep, truncated, a duplicate key ...), or ``N stray bytes after the
            CBOR item`` (with ``stray`` set) when bytes follow a well-formed one.
    """
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            tag_hook=_refuse_tag,
            semantic_decoders=_REFUSED_TAGS,
            max_depth=max_depth,
            strict_hashable_types=True,
            allow_duplicate_keys=False,
        )
        item = decoder.decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as error:
        raise StrictCBORError(f"malformed CBOR: {error}") from None
    stray = len(data) - stream.tell()
    if stray:
        raise StrictCBORError(f"{stray} stray bytes after the CBOR item", stray=stray)
    return item


__all__ = ["StrictCBORError", "decode_strict"]
