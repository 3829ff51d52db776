"""A narrator: waits for the controller to grant it a turn, then speaks, briefly.

    python narrator.py CONVERSATION [--socket PATH] [--turns N]

It follows the conversation's controller.decision events; for each one that says
speak_now, it reads the narrator prompt (template plus context) and says one line with the
grant. A real narrator would send prompt["messages"] to its LLM; this one keeps to facts.
"""

from __future__ import annotations

import argparse

from sidecar_client import Client, RpcError, follow


def line_for(prompt: dict, reason: str) -> str:
    newest = prompt["messages"][-1]["content"].splitlines()[-1] if len(prompt["messages"]) > 1 else ""
    return f"({reason}) Latest: {newest[:120]}"


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
            prompt = sidecar.narrator_prompt(conversation_id=cid, budget_tokens=1000, reason=data["reason"])
            try:
                said = sidecar.narrator_say(
                    conversation_id=cid, grant_id=data["grant_id"], text=line_for(prompt, data["reason"])
                )
            except RpcError as exc:  # expired while we thought, or someone else spoke: wait for the next
                print(f"grant refused: {exc.data}", flush=True)
                continue
            print(f"spoke at seq {said['seq']}", flush=True)
            spoken += 1
            if spoken >= args.turns:
                return


if __name__ == "__main__":
    main()
