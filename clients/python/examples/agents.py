"""Three agents on the Agent runtime: a coder, a web searcher and a RAG answerer.

    python agents.py [--socket PATH] [--agents coder,search,rag] [--beat SECONDS]
    python agents.py --submit CONVERSATION [--socket PATH]

The first form serves until Ctrl-C or SIGTERM (the agents give their tasks back, then exit).
``--submit`` first adds three tasks to CONVERSATION (fix a login test; search for OAuth docs;
answer a question from what the search found, a task that depends on the search), serves
until all three have ended, prints each as ``ID STATUS OUTPUTS-JSON``, and exits 0 when all
are done.

Each agent claims only its own type of task (``code.fix``, ``web.search``, ``rag.answer``),
reports progress to the activity rail, and returns the outputs the runtime stores on the
task; an exception fails the task with its message. No LLM is needed: the work is simulated
(``--beat`` seconds per step), but shaped like the real thing. The coder is a plain function
(the runtime runs it in a thread), the other two are coroutines.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sidecar_client import Agent, AsyncClient, AsyncTaskContext, Task, TaskContext
from sidecar_client.agent import Handler

# What the "web" holds: the search agent ranks these pages, the RAG agent reads them.
PAGES = {
    "https://example.com/oauth/refresh": (
        "Refreshing OAuth tokens",
        "An access token expires after an hour. Send the refresh token to the token endpoint with "
        "grant_type=refresh_token to get a new access token. Keep the refresh token secret.",
    ),
    "https://example.com/oauth/scopes": (
        "OAuth scopes",
        "Scopes limit what a token may do. Ask for the fewest scopes the app needs.",
    ),
    "https://example.com/sessions": (
        "Login sessions",
        "A session cookie keeps the user logged in. Rotate the session id after login.",
    ),
}
TYPES = {"coder": "code.fix", "search": "web.search", "rag": "rag.answer"}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2}


def coder(beat: float) -> Callable[[Task, TaskContext], dict[str, Any]]:
    def fix(task: Task, ctx: TaskContext) -> dict[str, Any]:
        test = task.get("inputs", {}).get("test", "tests/test_login.py")
        ctx.progress(f"reading {test}")
        time.sleep(beat)  # a plain handler runs in a thread of its own: blocking is fine
        ctx.progress({"msg": "patching auth/session.py", "pct": 50})
        time.sleep(beat)
        ctx.progress({"msg": f"running {test}", "pct": 90})
        ctx.heartbeat()  # the work is moving: the controller's idle watchdog stays quiet
        return {"files": ["auth/session.py"], "tests": "passed"}

    return fix


def search(beat: float) -> Callable[[Task, AsyncTaskContext], Awaitable[dict[str, Any]]]:
    async def find(task: Task, ctx: AsyncTaskContext) -> dict[str, Any]:
        query = task.get("inputs", {}).get("query", "")
        await ctx.progress(f"searching the web for {query!r}")
        await anyio.sleep(beat)
        scored = sorted(
            ((len(words(query) & words(title + " " + text)), url, title) for url, (title, text) in PAGES.items()),
            reverse=True,
        )
        hits = [{"url": url, "title": title, "score": score} for score, url, title in scored if score > 0]
        if not hits:
            raise LookupError(f"nothing found for {query!r}")
        await ctx.progress({"msg": f"{len(hits)} results", "pct": 100})
        return {"results": hits[:3]}

    return find


def rag(beat: float) -> Callable[[Task, AsyncTaskContext], Awaitable[dict[str, Any]]]:
    async def answer(task: Task, ctx: AsyncTaskContext) -> dict[str, Any]:
        question = task.get("inputs", {}).get("question", "")
        urls: list[str] = []
        for dep in task.get("dependency_ids", []):  # the search it depends on is done: read its results
            found = await ctx.call("tasks.get", {"id": dep})
            urls += [hit["url"] for hit in found.get("outputs", {}).get("results", []) if hit["url"] in PAGES]
        await ctx.progress(f"indexing {len(urls)} pages")
        await anyio.sleep(beat)
        sentences = [(url, s.strip()) for url in urls for s in PAGES[url][1].split(".") if s.strip()]
        ranked = sorted(sentences, key=lambda pair: len(words(question) & words(pair[1])), reverse=True)[:2]
        if not ranked:
            raise LookupError("no sources to answer from")
        await ctx.progress("drafting the answer")
        return {"answer": ". ".join(s for _, s in ranked) + ".", "sources": sorted({url for url, _ in ranked})}

    return answer


HANDLERS: dict[str, Callable[[float], Handler]] = {"coder": coder, "search": search, "rag": rag}


async def submit(socket: str | None, conversation: str) -> list[str]:
    """The three example tasks, in ``conversation``; the answer waits for the search."""
    suffix = uuid.uuid4().hex[:6]
    async with await AsyncClient.connect(socket) as c:
        fix = await c.tasks_create(
            id=f"fix-login-{suffix}",
            type="code.fix",
            conversation_id=conversation,
            inputs={"test": "tests/test_login.py"},
        )
        find = await c.tasks_create(
            id=f"find-oauth-{suffix}",
            type="web.search",
            conversation_id=conversation,
            inputs={"query": "refresh an OAuth token"},
        )
        ask = await c.tasks_create(
            id=f"answer-oauth-{suffix}",
            type="rag.answer",
            conversation_id=conversation,
            inputs={"question": "How do I get a new access token when it expires?"},
            dependency_ids=[find["id"]],
        )
    return [fix["id"], find["id"], ask["id"]]


async def until_ended(socket: str | None, ids: list[str]) -> list[Task]:
    """Poll the tasks until none is active (a few reads a second: an example, not a hot path)."""
    async with await AsyncClient.connect(socket) as c:
        while True:
            tasks = [await c.tasks_get(id=i) for i in ids]
            if all(t.get("status") not in ("pending", "running", "blocked") for t in tasks):
                return tasks
            await anyio.sleep(0.1)


async def main_async(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.agents.split(",") if n.strip()]
    agents = [
        Agent(name, HANDLERS[name](args.beat), types=[TYPES[name]], socket_path=args.socket, lease_s=args.lease)
        for name in names
    ]
    ended: list[Task] = []
    async with anyio.create_task_group() as outer:
        outer.start_soon(stop_on_signals, agents)
        async with anyio.create_task_group() as running:
            for agent in agents:
                running.start_soon(agent.run_async)  # several agents in one loop: they stop together
            if args.submit:
                ended = await until_ended(args.socket, await submit(args.socket, args.submit))
                for agent in agents:
                    agent.stop()
        outer.cancel_scope.cancel()
    for task in ended:
        print(task["id"], task.get("status"), json.dumps(task.get("outputs", {}), sort_keys=True), flush=True)
    return 0 if all(t.get("status") == "done" for t in ended) else 1


async def stop_on_signals(agents: list[Agent]) -> None:
    """SIGTERM or Ctrl-C stops every agent (each gives back what it holds)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            for agent in agents:
                agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket")
    parser.add_argument("--agents", default="coder,search,rag", help="which agents to run (comma-separated)")
    parser.add_argument("--beat", type=float, default=0.5, help="seconds each simulated step takes")
    parser.add_argument("--lease", type=int, default=30, help="lease seconds (renewed while a task runs)")
    parser.add_argument("--submit", metavar="CONVERSATION", help="add three example tasks, serve until they end")
    args = parser.parse_args()
    unknown = set(args.agents.split(",")) - set(HANDLERS)
    if unknown:
        parser.error(f"unknown agents: {', '.join(sorted(unknown))} (known: {', '.join(HANDLERS)})")
    sys.exit(anyio.run(main_async, args))


if __name__ == "__main__":
    main()
