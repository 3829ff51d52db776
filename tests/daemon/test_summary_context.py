"""summary.* and context.build over the socket."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from sidecar_client import Client, RpcError


def fill(c: Client, n: int) -> None:
    events = [
        {
            "conversation_id": "c1",
            "type": "agent.progress",
            "agent_id": "coder",
            "task_id": f"t{i % 3}",
            "data": {"msg": f"step {i}"},
        }
        for i in range(n)
    ]
    c.call("log.append_many", {"events": events})


def test_summary_rolling_persist_get(daemon) -> None:
    with Client(daemon.socket_path) as c:
        with pytest.raises(RpcError) as info:
            c.call("summary.get", {"conversation_id": "c1"})
        assert info.value.code == -32002
        fill(c, 40)
        rolling = c.call("summary.rolling", {"conversation_id": "c1", "keep_recent": 5})
        assert (rolling["from_seq"], rolling["to_seq"], rolling["recent"]) == (1, 40, 5)
        assert rolling["summary_ref"] == hashlib.sha256(rolling["markdown"].encode()).hexdigest()
        persisted = c.call("summary.persist", {"conversation_id": "c1", "keep_recent": 5})
        assert persisted["summary_ref"] == rolling["summary_ref"]  # same events, same bytes
        assert persisted["path"].endswith("summaries/c1.md")
        got = c.call("summary.get", {"conversation_id": "c1"})
        assert got["markdown"] == rolling["markdown"]
        capped = c.call("summary.rolling", {"conversation_id": "c1", "keep_recent": 5, "max_tokens": 60})
        assert capped["token_estimate"] <= 60
    on_disk = (daemon.data_dir / "summaries" / "c1.md").read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == rolling["summary_ref"]
    assert (daemon.data_dir / "summaries" / "_snapshots" / "c1" / f"{rolling['summary_ref']}.md").exists()
    with Client(daemon.socket_path) as c:
        fill(c, 5)
        newer = c.call("summary.persist", {"conversation_id": "c1"})  # a newer summary replaces it...
        assert c.call("summary.get", {"conversation_id": "c1"})["summary_ref"] == newer["summary_ref"]
        cited = c.call("summary.snapshot", {"conversation_id": "c1", "summary_ref": rolling["summary_ref"]})
        assert cited["markdown"] == rolling["markdown"]  # ...but the cited snapshot stays
        with pytest.raises(RpcError) as info:
            c.call("summary.snapshot", {"conversation_id": "c1", "summary_ref": "0" * 64})
        assert info.value.code == -32002


def test_context_build(daemon) -> None:
    with Client(daemon.socket_path) as c:
        fill(c, 60)
        c.call("tasks.create", {"type": "code", "id": "t-ctx", "conversation_id": "c1", "owner": "coder"})
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 4000, "system_prompt": "Be brief."})
        assert [layer["name"] for layer in ctx["layers"]] == ["system", "tasks", "summary", "recent", "newest"]
        assert ctx["total_tokens"] <= 4000 and "t-ctx" in ctx["layers"][1]["text"]
        tight = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 50, "system_prompt": "Be brief."})
        assert tight["total_tokens"] <= 50 and tight["layers"][0]["text"] == "Be brief."
        with pytest.raises(RpcError) as info:
            c.call("context.build", {"conversation_id": "c1", "budget_tokens": 0})
        assert info.value.code == -32602


def test_summaries_keep_up_without_rereading_the_log(daemon) -> None:
    from sidecar.context.build import build_context
    from sidecar.log import EventStore
    from sidecar.log.summarize import rolling_summary

    with Client(daemon.socket_path) as c:
        fill(c, 30)
        first = c.call("summary.rolling", {"conversation_id": "c1"})
        reads = c.call("sys.stats")["summary_full_reads"]
        fill(c, 50)  # folded in as they commit
        with EventStore(daemon.data_dir) as other:  # and a writer in another "process"
            other.append({"conversation_id": "c1", "type": "agent.note", "data": {"text": "from outside"}})
        later = c.call("summary.rolling", {"conversation_id": "c1"})
        context = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 4000, "system_prompt": "Hi."})
        assert c.call("sys.stats")["summary_full_reads"] == reads  # no re-read of the log
        events = c.call("log.query", {"conversation_id": "c1", "limit": 1000})["events"]
    assert (first["to_seq"], later["to_seq"]) == (30, 81)
    assert later["markdown"] == rolling_summary("c1", events)["markdown"]  # same as from scratch
    assert context == msgspec.to_builtins(build_context("c1", events, budget_tokens=4000, system_prompt="Hi."))
    assert "from outside" in later["markdown"]
