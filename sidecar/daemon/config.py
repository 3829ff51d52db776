"""Configuration: defaults, overridden by a TOML file, then ``SIDECAR_*``, then flags.

Every section is one ``msgspec.Struct`` that refuses unknown keys, so a typo in the file is
an error naming the key rather than a setting silently ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from sidecar.datadir import DEFAULT_DATA_DIR
from sidecar.jetstream.config import JetStreamConfig
from sidecar.log.events import MAX_EVENT_DEPTH
from sidecar.log.store import DEFAULT_JOURNAL_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_ROTATE_BYTES
from sidecar.paths import default_socket_path  # the clients keep the same definition

Positive = Annotated[int, Meta(gt=0)]
Seconds = Annotated[float, Meta(gt=0)]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who may connect to the socket, what each client may ask of the daemon, and logging."""

    # one NDJSON line (a request or a batch); a longer one is refused and the connection closed
    max_message_bytes: Positive = 1024 * 1024
    # clients at once (fewer when file descriptors are short); more are told -32005 and closed
    max_connections: Positive = 1024
    max_inflight: Positive = 64  # requests per connection before we stop reading from it
    max_depth: Annotated[int, Meta(ge=2, le=MAX_EVENT_DEPTH - 2)] = 64  # nesting of params (events stay readable)
    max_batch: Positive = 1000  # members of one batch
    max_reply_bytes: Annotated[int, Meta(ge=4096)] = 16 * 1024 * 1024  # one reply line
    max_subscriptions: Positive = 256  # live subscriptions per connection
    line_timeout_s: Seconds = 30.0  # a line begun but not finished this long: the connection closes
    idle_timeout_s: Annotated[float, Meta(ge=0)] = 0.0  # idle connections (no subscription) close; 0: never
    subscriber_queue: Positive = 10_000  # events a subscriber may lag before it is dropped
    allow_uids: list[int] = []  # peers besides our own uid (and root) that may connect
    allow_gids: list[int] = []  # peers in these groups may connect too
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # what the daemon logs to stderr
    # auto: readable lines when stderr is a terminal, JSON lines otherwise (a file, journald)
    log_format: Literal["auto", "json", "console"] = "auto"
    # auto: uvloop where it is installed (it is a dependency on Linux and macOS), else asyncio's
    # own loop; read at start-up only
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The event log on disk."""

    rotate_bytes: Positive = DEFAULT_ROTATE_BYTES  # an active segment larger than this goes to data/archive/
    max_event_bytes: Positive = DEFAULT_MAX_EVENT_BYTES  # one event, encoded; a larger one gets -32602
    # a write-ahead journal: one fdatasync per batch, instead of one per conversation file it touched
    journal: bool = True
    # past this, the journal is checkpointed (the conversation files synced, the journal emptied)
    journal_bytes: Positive = DEFAULT_JOURNAL_BYTES
    # Retention (docs/history.md): sealed segments whose newest event is older than this many
    # days are dropped, in the background; 0 keeps everything
    retain_days: Annotated[float, Meta(ge=0)] = 0.0
    # bytes on disk per conversation (its active segment too), the oldest sealed segments
    # dropped beyond it; 0 keeps everything. rotate_bytes is how fine-grained a drop is
    retain_bytes: Annotated[int, Meta(ge=0)] = 0
    compress_archive: bool = False  # sealed segments stored zstd-compressed (every read still works)
    # where the log lives: "file" (this data directory) or "jetstream" (a NATS JetStream
    # stream shared by several daemons: [jetstream], docs/scale-out.md); read at start-up
    backend: Literal["file", "jetstream"] = "file"


class ControllerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """When the narrator may speak. Re-read on SIGHUP."""

    idle_timeout_s: Seconds = 30.0  # no event nor heartbeat this long, with open work: watchdog.idle
    min_gap_s: Seconds = 5.0  # the least time between two narrator turns, unless the user is waiting
    grant_ttl_s: Seconds = 30.0  # a speak grant expires after this


class LLMConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The OpenAI-compatible LLM server beside us (llama.cpp, vLLM), http or https: exact token
    counts (llama.cpp's /tokenize), the controller's LLM policy and the built-in narrator."""

    # e.g. http://127.0.0.1:8080 (or SIDECAR_LLM_URL); unset: no LLM, the rules alone decide
    url: str | None = None
    model: str | None = None  # the model name sent with each request (or SIDECAR_LLM_MODEL)
    # The name of the environment variable that holds the API key (sent as "Authorization:
    # Bearer ..."), so the key itself is in no file and no log.
    api_key_env: (
        Annotated[
            str,
            Meta(
                pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                description="an environment variable's name: letters, digits and '_', not starting with a digit",
            ),
        ]
        | None
    ) = None
    timeout_s: Seconds = 10.0  # a whole reply, streamed or not (/tokenize gets at most 2 s)
    health_every_s: Seconds = 5.0  # how often GET /health asks whether the server is up (sys.health's llm)
    max_tokens: Positive = 512  # the longest reply asked for
    narrator: bool = False  # the daemon speaks itself when a grant is issued
    narrator_budget_tokens: Positive = 3000  # the prompt; less when the server's context is smaller


class TasksConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The task queue (contract section 13)."""

    max_pending: Positive = 10_000  # pending tasks; tasks.create beyond gets -32005 (back-pressure)


class SearchConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Full-text search (docs/search.md). Read at start-up."""

    # the index in data/index/, kept by a thread of its own; off: no indexing, and log.search,
    # context.build's query and the console's search answer -32003
    enabled: bool = True


class Config(msgspec.Struct, kw_only=True):
    """Everything the daemon reads at start (and again on SIGHUP)."""

    data_dir: str = DEFAULT_DATA_DIR  # logs, summaries, archive and tasks.graph.json (or SIDECAR_DATA_DIR)
    # the Unix socket (or SIDECAR_SOCKET); unset: $XDG_RUNTIME_DIR/sidecar/sidecar.sock, else
    # /tmp/sidecar-$UID/sidecar.sock
    socket: str | None = None
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    controller: ControllerConfig = msgspec.field(default_factory=ControllerConfig)
    llm: LLMConfig = msgspec.field(default_factory=LLMConfig)
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)
    search: SearchConfig = msgspec.field(default_factory=SearchConfig)
    jetstream: JetStreamConfig = msgspec.field(default_factory=JetStreamConfig)

    @property
    def socket_path(self) -> str:
        return os.path.abspath(self.socket or default_socket_path())


# In a container the LLM server's address is known only at deploy time (docker-compose).
_LLM_ENV = {"SIDECAR_LLM_URL": "url", "SIDECAR_LLM_MODEL": "model"}


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to fix."""


def load_config(
    path: str | None = None,
    *,
    data_dir: str | None = None,
    socket: str | None = None,
    env: dict[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults < TOML file < environment < flags."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("SIDECAR_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:  # a directory, unreadable...
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    known = set(Config.__struct_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {unknown}")
    raw = {k: v for k, v in raw.items() if k in known}
    if env.get("SIDECAR_DATA_DIR"):
        raw["data_dir"] = env["SIDECAR_DATA_DIR"]
    if env.get("SIDECAR_SOCKET"):
        raw["socket"] = env["SIDECAR_SOCKET"]
    for var, key in _LLM_ENV.items():
        if env.get(var):
            raw["llm"] = {**raw.get("llm", {}), key: env[var]}
    if data_dir:
        raw["data_dir"] = data_dir
    if socket:
        raw["socket"] = socket
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        hint = _allowed_values(str(exc))
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {exc}{hint}") from None
    if config.log.backend == "jetstream" and (config.log.retain_days or config.log.retain_bytes):
        raise ConfigError(
            "[log] retain_days and retain_bytes apply to the file backend; on jetstream the stream keeps "
            "the log (docs/scale-out.md): leave them at 0"
        )
    return config


def _allowed_values(message: str) -> str:
    """For a bad choice (``Invalid enum value ... at `$.server.log_level```), the choices."""
    found = re.search(r"at `\$\.([a-z_.]+)`", message)
    if not found or "enum" not in message:
        return ""
    kind: Any = Config
    for name in found.group(1).split("."):
        kind = typing.get_type_hints(kind).get(name)
        if kind is None:
            return ""
    choices = typing.get_args(kind)
    return f"; expected one of {', '.join(repr(c) for c in choices)}" if choices else ""
