"""An agent: takes a task, reports progress to the activity rail, sends heartbeats, finishes.

    python agent.py CONVERSATION [--socket PATH] [--steps N]

It never writes user-visible text: that is the narrator's job, and the daemon refuses it.
This one drives a task by hand, call by call; agents.py shows the runtime that claims tasks
under leases and does the rest (sidecar_client.Agent).
"""

from __future__ import annotations

import argparse
import uuid

from sidecar_client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("conversation")
    parser.add_argument("--socket")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--name", default="coder")
    args = parser.parse_args()
    cid, me = args.conversation, args.name
    with Client(args.socket) as sidecar:
        task = sidecar.tasks_create(type="example", id=f"{me}-{uuid.uuid4().hex[:8]}", owner=me, conversation_id=cid)
        sidecar.tasks_update(id=task["id"], status="running", expected_version=task["version"])
        for step in range(1, args.steps + 1):
            sidecar.log_append(
                conversation_id=cid,
                type="agent.progress",
                visibility="status",
                agent_id=me,
                task_id=task["id"],
                data={"msg": f"step {step} of {args.steps}", "pct": round(100 * step / args.steps)},
            )
            sidecar.controller_heartbeat(conversation_id=cid, agent_id=me, task_id=task["id"])
        done = sidecar.tasks_update(id=task["id"], status="done", outputs={"steps": args.steps})
        print(f"{task['id']} done at version {done['version']}")


if __name__ == "__main__":
    main()
