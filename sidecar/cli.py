"""The ``sidecar`` command: run the daemon, call it, check it, follow a conversation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from sidecar.terminal import printable

if TYPE_CHECKING:  # imported when a command needs the daemon (the client loads lazily)
    from sidecar_client import Client

EXAMPLES = """\
examples:
  sidecar serve                                   run on ./data, socket at the default path
  sidecar serve --data-dir /var/lib/sidecar --socket /run/sidecar/sidecar.sock
  sidecar health && echo up                       exit 0 healthy, 2 degraded (LLM unreachable), 1 down
  sidecar call sys.stats
  sidecar call log.append '{"conversation_id": "c1", "type": "agent.progress", "data": {"pct": 40}}'
  sidecar call log.tail '{"conversation_id": "c1", "limit": 5}'
  sidecar tail c1 -n 50 -f                        the last 50 events of c1, then follow
  sidecar tail c1 --json | jq .type
  sidecar search 'deploy "connection refused"'    events that match, best first (docs/search.md)
  sidecar search 'timeout OR oom' -c c1 -n 5 --type agent.error
  sidecar methods                                 every method; `sidecar methods log.append` shows one
  sidecar rebuild-tasks --data-dir /var/lib/sidecar  tasks.graph.json again, from the log alone
  sidecar web                                     the console: open the URL it prints
  sidecar mcp                                     an MCP server on stdio, for a model's host (docs/mcp.md)
  sidecar demo                                    a user, three agents and a narrator, in about 10 seconds
  sidecar demo --socket                           the same story, played into the running daemon
                                                  (watch it with `sidecar web`; a new conversation each run)

environment:
  SIDECAR_DATA_DIR, SIDECAR_SOCKET, SIDECAR_CONFIG stand in for --data-dir, --socket, --config.
  SIDECAR_LLM_URL, SIDECAR_LLM_MODEL set the config's [llm] url and model (e.g. http://llm:8080).
  The default socket is $XDG_RUNTIME_DIR/sidecar/sidecar.sock, else /tmp/sidecar-$UID/sidecar.sock.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="A durable event log and one disciplined narrator voice, beside a local LLM server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the daemon (until SIGTERM or Ctrl-C)")
    serve.add_argument("--data-dir", help="data directory (default: $SIDECAR_DATA_DIR or ./data)")
    serve.add_argument("--socket", help="Unix socket path (default: $SIDECAR_SOCKET or the runtime dir)")
    serve.add_argument("--config", help="TOML config file (default: $SIDECAR_CONFIG)")
    serve.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="stderr logs: readable lines (console) or JSON lines (json); default: [server] log_format, "
        "auto = console on a terminal, json otherwise",
    )

    call = sub.add_parser("call", help="call one method and print its JSON result")
    call.add_argument("method", help="e.g. sys.health, log.append, log.tail")
    call.add_argument("params", nargs="?", default="{}", help="named params as a JSON object")
    call.add_argument("--socket", help="Unix socket path")

    health = sub.add_parser(
        "health",
        help="exit 0 when the daemon answers healthy, 2 when degraded (its LLM server unreachable), 1 when down",
    )
    health.add_argument("--socket", help="Unix socket path")
    health.add_argument(
        "--degraded-ok",
        action="store_true",
        help="exit 0 when degraded too (for healthchecks that must not wait on the LLM server)",
    )

    demo = sub.add_parser(
        "demo",
        help="watch a user, three agents and a narrator, with the gate, the watchdog and a playbook",
        description="Watch a user, three agents and a narrator, with the gate, the watchdog and an error "
        "playbook (a tool times out), in about 10 seconds. Without --socket the demo runs its own daemon "
        "in a new temporary directory, removed at the end: your daemon, socket and data are not touched. "
        "With --socket it plays into a daemon already running (to watch in `sidecar web`), in a new "
        "conversation with task ids of its own; that daemon's controller settings pace it, the story "
        "ends within about 20 seconds, and a watchdog slower than that (idle_timeout_s, 30 s by "
        "default) does not show in it.",
    )
    demo.add_argument(
        "--socket",
        nargs="?",
        const="",
        metavar="PATH",
        help="play into the daemon on PATH (no PATH: $SIDECAR_SOCKET or the default socket)",
    )
    demo.add_argument(
        "--conversation",
        metavar="ID",
        help="the conversation to play in (default: demo-YYYYMMDD-HHMMSS, UTC, with --socket; else demo)",
    )

    web = sub.add_parser(
        "web",
        help="serve the console in a browser: the chat, the activity rail, tasks and decisions",
        description="Serve the console for people in a browser, on loopback behind a token. The first "
        "line on stdout is the URL to open, token included (docs/console.md). Needs the `web` extra "
        "(pip install 'sidecar[web]'; ./dev serve installs it).",
    )
    web.add_argument("--socket", help="the daemon's Unix socket path")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")

    mcp = sub.add_parser(
        "mcp",
        help="serve the daemon to a model over the Model Context Protocol, on stdio",
        description="A Model Context Protocol server on stdin/stdout that speaks to the daemon through its "
        "socket: tools, resources and prompts for a model's host (docs/mcp.md). Needs the `mcp` extra "
        "(pip install 'sidecar[mcp]').",
    )
    mcp.add_argument("--socket", help="the daemon's Unix socket path")

    tail = sub.add_parser("tail", help="show a conversation's newest events, and follow with -f")
    tail.add_argument("conversation", help="conversation id")
    tail.add_argument("-n", type=int, default=20, help="how many events to show first (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they arrive")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--socket", help="Unix socket path")

    search = sub.add_parser(
        "search",
        help="full-text search of the log: the best-matching events, their matched words highlighted",
        description="Events ranked by how well they match QUERY (BM25 over each event's type and the strings "
        'in its data). QUERY: words (all of them), "a phrase", a OR b, -excluded, prefix* '
        "(docs/search.md has the syntax).",
    )
    search.add_argument("query", help="what to look for, e.g. 'deploy -staging' or '\"connection refused\"'")
    search.add_argument("-c", "--conversation", help="only this conversation")
    search.add_argument("-t", "--type", action="append", dest="types", help="only events of this type (repeatable)")
    search.add_argument("-a", "--agent", action="append", dest="agents", help="only events of this agent (repeatable)")
    search.add_argument("-n", type=int, default=10, help="how many hits (1-100, default 10)")
    search.add_argument("--json", action="store_true", help="one JSON object per hit: event, score, snippet")
    search.add_argument("--socket", help="Unix socket path")

    rebuild = sub.add_parser(
        "rebuild-tasks",
        help="rewrite tasks.graph.json from the log alone (every task event carries the whole task)",
        description="Rewrite DATA_DIR/tasks.graph.json from the task events in the log, under the graph's "
        "lock: each task at its highest version. A running daemon takes the new file in as an outside "
        "edit. The daemon also does this by itself at start when the file and its journal are gone.",
    )
    rebuild.add_argument("--data-dir", help="data directory (default: $SIDECAR_DATA_DIR or ./data)")

    methods = sub.add_parser(
        "methods",
        help="every method (or one, in full: params, result, errors, example); no daemon needed",
        description="The reference of the daemon's methods, from its own schemas (docs/reference.md has "
        "everything). No daemon needed.",
    )
    methods.add_argument("name", nargs="?", help="a method (or notification) to show in full, e.g. log.append")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from sidecar.demo import main as demo

        return demo(socket=args.socket, conversation=args.conversation)
    if args.command == "methods":
        return _methods(args)
    if args.command == "rebuild-tasks":
        return _rebuild_tasks(args)
    if args.command == "web":
        return _web(args)
    if args.command == "mcp":
        return _mcp(args)
    from sidecar_client import Client, RpcError

    try:
        with Client(args.socket) as client:
            if args.command == "call":
                return _call(client, args)
            if args.command == "health":
                return _health(client, args.degraded_ok)
            if args.command == "search":
                return _search(client, args)
            return _tail(client, args)
    except RpcError as exc:
        if args.command == "search" and exc.code in (-32602, -32003):  # a query to fix, or search is off
            print(printable(f"sidecar search: {exc.message}"), file=sys.stderr)
            return 2
        print(json.dumps({"code": exc.code, "message": exc.message, "data": exc.data}), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Whoever read our output went away (`sidecar tail -f | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConnectionError as exc:  # no daemon, or it went away (DaemonUnavailable, ConnectionLost)
        print(f"sidecar: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _web(args: argparse.Namespace) -> int:
    try:
        from sidecar.web.main import serve
    except ImportError as exc:
        print(f"sidecar web: {exc.name} is missing: install the web extra, pip install 'sidecar[web]'", file=sys.stderr)
        return 1
    from sidecar_client import default_socket_path

    return serve(args.socket or default_socket_path(), args.host, args.port)


def _mcp(args: argparse.Namespace) -> int:
    try:
        from sidecar.mcp.server import main as serve_mcp
    except ImportError as exc:
        print(f"sidecar mcp: {exc.name} is missing: install the mcp extra, pip install 'sidecar[mcp]'", file=sys.stderr)
        return 1
    from sidecar_client import default_socket_path

    return serve_mcp(args.socket or default_socket_path())


def _serve(args: argparse.Namespace) -> int:
    from sidecar.daemon.config import ConfigError, load_config
    from sidecar.daemon.logging import configure
    from sidecar.daemon.server import serve

    try:
        config = load_config(args.config, data_dir=args.data_dir, socket=args.socket)
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    if args.log_format:  # the flag wins, for the daemon and the processes it starts (the indexer)
        config.server.log_format = args.log_format
    configure(config.server.log_level, config.server.log_format)
    return serve(config, args.config or os.environ.get("SIDECAR_CONFIG"))


def _call(client: Client, args: argparse.Namespace) -> int:
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        print(f"sidecar: params are not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("sidecar: params must be a JSON object (named params)", file=sys.stderr)
        return 2
    print(json.dumps(client.call(args.method, params), indent=2))
    return 0


def _health(client: Client, degraded_ok: bool) -> int:
    """0 healthy; 2 degraded (a configured LLM server unreachable), unless ``degraded_ok``;
    1 anything else (the caller turns no answer at all into 1 too)."""
    result = client.call("sys.health")
    status = result.get("status") if isinstance(result, dict) else None
    print(json.dumps(result))
    if status == "ok" or (status == "degraded" and degraded_ok):
        return 0
    return 2 if status == "degraded" else 1


def _rebuild_tasks(args: argparse.Namespace) -> int:
    from sidecar.datadir import resolve_data_dir
    from sidecar.errors import SidecarError
    from sidecar.log.store import EventStore
    from sidecar.tasks.history import rebuild
    from sidecar.tasks.store import GRAPH_FILE, locked, write_graph

    data_dir = resolve_data_dir(args.data_dir)
    path = os.path.join(data_dir, GRAPH_FILE)
    try:
        with EventStore(data_dir) as store:
            graph = rebuild(store)
        with locked(path, exclusive=True):
            write_graph(path, graph)
    except (SidecarError, OSError) as exc:
        print(f"sidecar rebuild-tasks: {exc}", file=sys.stderr)
        return 1
    print(f"sidecar rebuild-tasks: {len(graph.tasks)} tasks from {graph.version} task events -> {path}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    """``sidecar methods [NAME]``: the reference on a terminal, from the registry in-process
    (the document rpc.discover answers), so it works before any daemon runs."""
    import shutil

    from sidecar.reference import discover, method_index, method_text, suggestions

    doc = discover()
    if args.name is None:
        sys.stdout.write(method_index(doc))
        return 0
    text = method_text(doc, args.name, width=max(60, min(shutil.get_terminal_size().columns, 100)))
    if text is None:
        near = suggestions(doc, args.name)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `sidecar methods` lists them all"
        print(printable(f"sidecar: no method {args.name!r}{hint}"), file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


_COLOURS = {"user": "\033[1;36m", "status": "\033[33m", "internal": "\033[2m"}
_LEVEL_MARK = {"milestone": "★", "decision": "◆", "action": "•", "state": "·", "detail": " "}


def format_event(event: dict[str, Any], colour: bool) -> str:
    """One readable line: seq, time, visibility, level mark, type, agent, data.

    Every field came from some client: whatever it holds is shown, never obeyed."""
    ts = event["timestamp"][11:23]
    payload = event.get("data") or {}
    head = ""
    if event["type"].startswith("task.") and isinstance(payload, dict):
        head, payload = _task_head(event, payload)
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if len(data) > 120:
        data = data[:117] + "..."
    agent = f" [{event['agent_id']}]" if event.get("agent_id") else ""
    line = printable(
        f"{event['seq']:>6} {ts} {event['visibility']:<8} {_LEVEL_MARK.get(event['level'], ' ')} "
        f"{event['type']}{agent} {head}{data}"
    )
    if colour:
        return f"{_COLOURS.get(event['visibility'], '')}{line}\033[0m"
    return line


_TASK_HEAD = ("id", "status", "owner")


def _task_head(event: dict[str, Any], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``task=ID status=S owner=O `` and the rest of ``data``: what a task event is about,
    before the cut at 120 characters (the whole task, ``data.task``, goes last)."""
    task = data.get("task")
    fields = task if isinstance(task, dict) else data
    shown = {key: fields.get(key) for key in _TASK_HEAD}
    if shown["id"] is None:
        shown["id"] = event.get("task_id")
    head = "".join(f"{'task' if key == 'id' else key}={value} " for key, value in shown.items() if value is not None)
    if isinstance(task, dict):
        rest = {k: v for k, v in data.items() if k != "task"}
        rest["task"] = {k: v for k, v in task.items() if k not in _TASK_HEAD}
    else:
        rest = {k: v for k, v in data.items() if k not in _TASK_HEAD}
    return head, rest


def _missing(client: Client, conversation: str) -> str | None:
    """``None`` when ``conversation`` exists, else what to tell: the conversations there are."""
    known = sorted(c["conversation_id"] for c in client.call("log.conversations")["conversations"])
    if conversation in known:
        return None  # it exists, its events are just gone (retention)
    if not known:
        return "there are none yet"
    listed = ", ".join(known[:10])
    return f"known: {listed}, ... ({len(known)} in all)" if len(known) > 10 else f"known: {listed}"


def _tail(client: Client, args: argparse.Namespace) -> int:
    colour = sys.stdout.isatty() and not args.json and "NO_COLOR" not in os.environ

    def show(event: dict[str, Any]) -> None:
        line = printable(json.dumps(event, ensure_ascii=False)) if args.json else format_event(event, colour)
        print(line, flush=True)

    shown = max(args.n, 0)
    events = client.call("log.tail", {"conversation_id": args.conversation, "limit": max(shown, 1)})["events"]
    missing = None if events else _missing(client, args.conversation)
    if missing is not None:  # a typo, most likely: say so rather than print nothing
        name = repr(args.conversation)
        if not args.follow:
            print(printable(f"sidecar: no conversation {name} ({missing})"), file=sys.stderr)
            return 1
        print(
            printable(f"sidecar: no conversation {name} yet; waiting for its first event"), file=sys.stderr, flush=True
        )
    for event in events[len(events) - shown :] if shown else []:
        show(event)
    if args.follow:
        last = events[-1]["seq"] if events else 0  # follow from the newest, shown or not
        for event in client.subscribe({"conversation_id": args.conversation, "from_seq": last + 1}):
            show(event)
    return 0


_MARK_ON, _MARK_OFF = "\033[1;33m", "\033[0m"


def _highlighted(snippet: str, colour: bool) -> str:
    """A snippet on one line, its ``**matched**`` words in bold yellow (or left as ``**`` marks)."""
    text = printable(" ".join(snippet.split()))
    if not colour:
        return text
    parts = text.split("**")
    return "".join(f"{_MARK_ON}{part}{_MARK_OFF}" if i % 2 else part for i, part in enumerate(parts))


def _search(client: Client, args: argparse.Namespace) -> int:
    colour = sys.stdout.isatty() and not args.json and "NO_COLOR" not in os.environ
    params: dict[str, Any] = {"q": args.query, "limit": args.n}
    for key, value in (("conversation_id", args.conversation), ("types", args.types), ("agent_ids", args.agents)):
        if value:
            params[key] = value
    result = client.call("log.search", params)
    if result.get("indexing"):
        print("sidecar search: the index is still being built from the logs; hits may be missing", file=sys.stderr)
    hits = result["hits"]
    for hit in hits:
        if args.json:
            print(printable(json.dumps(hit, ensure_ascii=False)), flush=True)
            continue
        event = hit["event"]
        where = printable(f"{event['conversation_id']}#{event['seq']}")
        head = f"{where}  {event['timestamp'][:19].replace('T', ' ')}  {printable(event['type'])}"
        score = f"{hit['score']:.2f}"
        print(f"\033[36m{head}\033[0m  \033[2m{score}\033[0m" if colour else f"{head}  {score}")
        print(f"    {_highlighted(hit['snippet'], colour)}", flush=True)
    if not hits and not args.json:
        print("sidecar search: no event matches", file=sys.stderr)
        return 1
    return 0
