"""How far a daemon's copy of the stream is: the stream sequence it has everything up to.

Kept in the data directory (``jetstream-position``), written within a second of moving and
at a clean stop, so that a daemon that starts again reads only what came after it rather
than the whole stream. It may lag the copy (a crash between the two); what is then read
again, the copy has already and skips. It is trusted no further than it can be checked: a
file that is damaged, of another stream, or of a stream made again since (its creation
time) is ignored, and the daemon reads the stream from its beginning.
"""

from __future__ import annotations

import os
from typing import Annotated

import msgspec
import structlog
from msgspec import Meta

from sidecar.datadir import read_regular
from sidecar.fs import atomic_write

log = structlog.get_logger("sidecar.jetstream")

POSITION_FILE = "jetstream-position"


class Position(msgspec.Struct, frozen=True):
    """The stream ``stream``, made at ``created``: its copy has every message up to ``stream_seq``."""

    stream: str
    created: str
    stream_seq: Annotated[int, Meta(ge=0)]


_decoder = msgspec.json.Decoder(Position)


def load(data_dir: str) -> Position | None:
    """The saved position, or None (none yet, or not to be trusted: logged)."""
    path = os.path.join(data_dir, POSITION_FILE)
    try:
        return _decoder.decode(read_regular(path, 4096))
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("jetstream.position_ignored", path=path, error=str(exc))
        return None


def save(data_dir: str, position: Position) -> None:
    """Replace the saved position, durably (0600)."""
    atomic_write(os.path.join(data_dir, POSITION_FILE), msgspec.json.encode(position) + b"\n")
