"""Coverage-guided fuzzing of everything a stranger's bytes reach: ``./dev fuzz [SECONDS]``.

One input is split by its first byte between seven targets, each of which must answer bad
input with the project's own errors and nothing else:

- the wire: a line through ``parse_message``, then every request's params through every
  method's params Struct (what the daemon does before a handler runs);
- a log file: the bytes as a conversation's log on disk, opened and read (tail, from the
  file and from memory, query, since, get of the ids found, conversations), where damage
  must be refused as a :class:`~sidecar.errors.SidecarError`;
- a segment searched directly: a seq by its guessed place and by binary search, a time by
  binary search, where a damaged line may only raise the decoder's own errors;
- a playbook file from ``data/playbooks/``, parsed (front matter in TOML or YAML), where
  anything wrong must be a :class:`~sidecar.playbooks.library.PlaybookError`;
- the task graph file, read as the daemon reads it;
- the config file, loaded as ``sidecar serve`` loads it;
- the Python client's codec, fed a peer's bytes split anywhere.

Any other exception, a hang (libFuzzer's ``-timeout``) or a crash of the interpreter is a
finding: libFuzzer stops and writes the input to ``crash-*`` in the working directory.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import atheris
import structlog

with atheris.instrument_imports(include=["sidecar", "sidecar_client", "msgspec"]):
    import msgspec
    from sidecar_client.codec import Codec, Reply
    from sidecar_client.errors import ProtocolError, RpcError

    from sidecar.api import registry
    from sidecar.daemon.config import ConfigError, load_config
    from sidecar.errors import SidecarError
    from sidecar.log.segments import DECODE_ERRORS, bisect_lines, line_with_seq, timestamp_of
    from sidecar.log.store import EventStore
    from sidecar.playbooks.library import PlaybookError, parse
    from sidecar.rpc.dispatch import BadParams
    from sidecar.rpc.protocol import Invalid, Limits, Message, encode, error_response, parse_message
    from sidecar.tasks.store import read_graph

SCRATCH = tempfile.mkdtemp(prefix="sidecar-fuzz-")
LIMITS = Limits()
PARAMS = sorted({m.params for m in registry.methods.values()}, key=lambda t: t.__name__)


def wire(data: bytes) -> None:
    message = parse_message(data, LIMITS)
    assert isinstance(message, Message) and message.items
    for item in message.items:
        if isinstance(item, Invalid):
            encode(error_response(item.id, item.code, item.message))  # the reply must encode
            continue
        encode(error_response(item.id, -32600, "x"))
        for params in PARAMS:
            try:
                registry.params_of(item, params)
            except BadParams:
                pass


def log_file(data: bytes) -> None:
    root = tempfile.mkdtemp(dir=SCRATCH)
    os.makedirs(os.path.join(root, "logs"))
    with open(os.path.join(root, "logs", "c1.jsonl"), "wb") as f:
        f.write(data)
    store = EventStore(root, journal=False)
    try:
        for step in (
            lambda: store.load(),
            lambda: store.tail("c1", 5),
            lambda: store.tail("c1", 5, shared=True),
            lambda: store.tail("c1", 3, shared=True),  # from the view the one before made
            lambda: [store.get(e.id, shared=True) for e in store.tail("c1", 5)],
            lambda: store.since("2026-01-01T00:00:00Z", limit=5),
            lambda: store.query(conversation_id="c1", limit=10),
            lambda: store.query(limit=10),
            lambda: store.get("0195a3c2-0000-7000-8000-000000000001"),
            lambda: store.conversations(),
            lambda: store.append({"conversation_id": "c1", "type": "fuzz.after"}),
        ):
            try:
                result = step()
                msgspec.json.encode(result)  # whatever is read back must encode as a reply
            except SidecarError:
                pass
    finally:
        store.close()
        _remove(root)


def segment_seek(data: bytes) -> None:
    path = os.path.join(SCRATCH, "segment.jsonl")
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        end = len(data)
        for seq in (1, 2, 7, data[0] if data else 3, 10_000):
            for first in (1, None, seq):
                try:
                    line_with_seq(fd, end, seq, first)
                except DECODE_ERRORS:
                    pass
        try:
            bisect_lines(fd, 0, end, timestamp_of, "2026-11-29T10:00:00.000000Z")
        except DECODE_ERRORS:
            pass
    finally:
        os.close(fd)


def playbook_file(data: bytes) -> None:
    try:
        playbook = parse(data.decode("utf-8"), "fuzz.md")
    except (UnicodeDecodeError, PlaybookError):
        return
    msgspec.json.encode(playbook)  # what playbooks.match answers must encode as a reply


def graph_file(data: bytes) -> None:
    path = os.path.join(SCRATCH, "tasks.graph.json")
    with open(path, "wb") as f:
        f.write(data)
    try:
        read_graph(path)
    except SidecarError:
        pass


def config_file(data: bytes) -> None:
    path = os.path.join(SCRATCH, "config.toml")
    with open(path, "wb") as f:
        f.write(data)
    try:
        load_config(path, env={})
    except ConfigError:
        pass


def client_codec(data: bytes) -> None:
    """What a client makes of a daemon's bytes (a broken or hostile peer): replies to its
    requests, notifications to its subscriptions, split anywhere; only RpcError (an error
    reply, an overflow) or ProtocolError may come out."""
    codec = Codec(max_line_bytes=4096)
    for _ in range(3):
        codec.request("sys.health")
    codec.subscribe_request({"conversation_id": "c1"})
    cut = data[0] % (len(data) + 1) if data else 0
    try:
        for chunk in (data[:cut], data[cut:]):
            for event in codec.feed(chunk):
                if isinstance(event, Reply):
                    try:
                        event.unwrap()
                    except RpcError:
                        pass
                elif event.subscription is not None:
                    try:
                        event.ends_subscription()
                    except RpcError:
                        pass
    except ProtocolError:
        pass


# The wire gets the most time; a seed's first byte picks its target (fuzz/seeds/), so new
# targets go at the end.
TARGETS = (wire, wire, log_file, graph_file, config_file, client_codec, segment_seek, playbook_file)


def one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def _remove(root: str) -> None:
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
        for name in dirs:
            os.rmdir(os.path.join(top, name))
    os.rmdir(root)


if __name__ == "__main__":
    # What the targets log about damage they meet is expected here; only escapes matter.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sys.setrecursionlimit(1000)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
