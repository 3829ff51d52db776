"""A narrator: waits for the controller to grant it a turn, then tells the user, in one plain
sentence, what happened.

    python narrator.py CONVERSATION [--socket PATH] [--turns N]

It follows the conversation's controller.decision events; for each one that says
speak_now, it builds a sentence from the decision's reason, the events that led to it and
the conversation's open tasks, and says it with the grant. A real narrator would send
narrator.prompt's messages to its LLM instead; this one needs none.
"""

from __future__ import annotations

import argparse
from typing import Any

from sidecar_client import Client, RpcError, follow


def named(task: dict[str, Any]) -> str:
    """What a task is called in a sentence: its type and id."""
    return f"the {task['type']} task {task['id']}" if task.get("type") else f"task {task['id']}"


def capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(reason: str, events: list[dict[str, Any]], working: list[dict[str, Any]]) -> str:
    """One sentence for the user, from the decision's reason, the events before it (oldest
    first) and the conversation's open tasks."""

    def newest(test: Any) -> dict[str, Any]:
        return next((e for e in reversed(events) if test(e)), {})

    def task_with(status: str) -> dict[str, Any] | None:
        found = newest(lambda e: isinstance(e["data"].get("task"), dict) and e["data"]["task"].get("status") == status)
        return found.get("data", {}).get("task")

    if reason == "user_message":
        asked = newest(lambda e: e["type"] == "user.message").get("data", {}).get("text")
        heard = f'You asked: "{str(asked)[:80]}". ' if asked else ""
        if not working:
            return f"{heard}Nothing is running right now."
        count = "One task is" if len(working) == 1 else f"{len(working)} tasks are"
        return f"{heard}{count} under way: {', '.join(named(t) for t in working)}."
    if reason == "task_done":
        task = task_with("done")
        return f"{capitalized(named(task))} is done." if task else "A task has finished."
    if reason == "task_failed":
        task = task_with("failed")
        if not task:
            return "A task failed."
        why = (task.get("outputs") or {}).get("error")
        return f"{capitalized(named(task))} failed{f': {why}' if why else '.'}"
    if reason == "error":
        data = newest(lambda e: e["type"].endswith(".error")).get("data", {})
        what = data.get("message") or data.get("error")
        return f"An agent ran into an error: {str(what)[:120]}." if what else "An agent ran into an error."
    if reason == "idle":
        return "Still working on it; nothing new from the agents for a while."
    return f"There is news in this conversation ({reason})."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("conversation")
    parser.add_argument("--socket")
    parser.add_argument("--turns", type=int, default=1, help="stop after speaking this many times")
    args = parser.parse_args()
    cid = args.conversation
    spoken = 0
    with Client(args.socket) as sidecar:
        newest = sidecar.log_tail(conversation_id=cid, limit=1)["events"]
        start = newest[-1]["seq"] + 1 if newest else 1  # old decisions' grants are spent
        for decision in follow(cid, from_seq=start, socket_path=args.socket, types=["controller.decision"]):
            data = decision["data"]
            if not data.get("speak_now"):
                continue
            # What led to the decision: the events just before it, and the tasks still open.
            recent = [
                e for e in sidecar.log_tail(conversation_id=cid, limit=50)["events"] if e["seq"] < decision["seq"]
            ]
            working = [t for t in sidecar.tasks_list_active()["tasks"] if t.get("conversation_id") == cid]
            text = sentence(data["reason"], recent, working)
            try:
                said = sidecar.narrator_say(conversation_id=cid, grant_id=data["grant_id"], text=text)
            except RpcError as exc:  # expired while we thought, or someone else spoke: wait for the next
                print(f"grant refused: {exc.data}", flush=True)
                continue
            print(f"spoke at seq {said['seq']}: {text}", flush=True)
            spoken += 1
            if spoken >= args.turns:
                return


if __name__ == "__main__":
    main()
