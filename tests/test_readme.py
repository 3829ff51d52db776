"""Every code block in README.md runs as written, against a real daemon, and finishes.

The README's fenced blocks are run section by section (a ``##`` or ``###`` heading), in
order, in a fresh working directory beside a fresh daemon (``SIDECAR_SOCKET`` points at it):

- ``python``: run with this interpreter. A block whose first line is ``# NAME.py`` is a file
  the reader saves: it is written as ``NAME.py``, and a later ``sh`` block runs it.
- ``js``: the same with ``node``; ``// NAME.mjs`` names the file.
- ``sh``: run by ``bash -e -o pipefail`` with the ``sidecar`` command on PATH.
  ``/path/to/sidecar/`` stands for a copy of this repository's TypeScript client in a
  temporary directory (so ``npm install`` never builds inside the checkout).
- ``sh follow=CONVERSATION``: a command that runs until Ctrl-C. It must show the newest event
  of CONVERSATION, then one appended while it runs, and still be running; then it gets
  SIGINT and must stop.
- ``notest``: not run here; ``NOT_RUN`` says why, or where it is run instead.

Each block must exit 0 within its time limit. A few sections also check what the blocks
printed (``EXPECT``), and Python blocks are linted with the project's ruff settings.

(The well-kept tools, pytest-markdown-docs and pytest-examples, run only Python blocks and
run them inside the pytest process; this README's shell and JavaScript blocks matter as
much, and a snippet that never ends must fail on its own rather than hang the run.)
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sidecar_client import Client

from tests.daemon import conftest as daemon_fixtures

start_daemon = daemon_fixtures.start_daemon  # the daemon fixture of tests/daemon, here too

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TS_CLIENT = ROOT / "clients" / "typescript"
# The TypeScript client's own files, as a fresh clone has them (no node_modules/, no dist/).
TS_CLIENT_FILES = [".gitignore", "package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"]
TS_CLIENT_FILES += ["README.md", "src", "scripts", "examples"]
PLACEHOLDER = "/path/to/sidecar/"

RUNNABLE = {"python", "sh", "js"}
NOT_CODE = {"", "text", "toml", "json"}  # diagrams, the code map, config and output samples

# A block tagged notest, by its first command (comments dropped): why it is not run here.
NOT_RUN = {
    "./dev serve": (
        "runs until Ctrl-C (and ./dev test is this suite itself); every section here runs against "
        "the same `sidecar serve`"
    ),
    "cd clients/typescript && npm ci": (
        "clients/typescript/test/examples.test.ts runs both examples against a real daemon, and "
        "test/install.test.ts runs agent.mjs from a fresh install"
    ),
    "sidecar demo": "tests/test_demo.py runs it start to finish and checks what it shows",
    "sidecar web": (
        "serves until stopped; tests/web runs it against a real daemon, over HTTP and in a real "
        "browser, with `sidecar demo --socket` in tests/test_demo.py"
    ),
    "./dev bench": "minutes of benchmarks on a quiet machine; not part of the test suite",
}

# What a section's blocks must print (regexes, multiline), beyond exiting 0.
EXPECT = {
    "From the shell": [r"^up$", r'"seq": 1,', r"app\.started", r"readme\.follow"],
    "From Python": [r"^1 app\.started \{'user': 'ada'\}$", r"^event 1 app\.started$"],
    "From TypeScript or JavaScript": [r"^1 app\.started \{ user: 'ada' \}$", r"^event 1 app\.started$"],
    "Events and the wire protocol": [r"^\{'jsonrpc': '2\.0', 'id': 1, 'result': \{'id': "],
}

# Sections whose blocks use the event log in-process, with no daemon.
WITHOUT_DAEMON = {"The event log as a library"}

BLOCK_TIMEOUT_S = 60
NPM_TIMEOUT_S = 240  # `npm install` of the client: its prepare may fetch TypeScript first


@dataclass
class Block:
    lang: str
    tags: list[str]
    code: str
    line: int  # of the opening fence, 1-based
    section: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0].strip() if self.code.strip() else ""

    @property
    def first_command(self) -> str:
        """The first line without its comment, spaces squeezed."""
        return " ".join(self.first_line.split("#", 1)[0].split())

    @property
    def follow(self) -> str | None:
        return next((t.split("=", 1)[1] for t in self.tags if t.startswith("follow=")), None)

    @property
    def file_name(self) -> str | None:
        """The file a reader saves this block as, when its first line names one."""
        m = re.fullmatch(r"(?:#|//) ([\w.-]+\.(?:py|mjs|js))", self.first_line)
        return m.group(1) if m else None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang} in '{self.section}')"


FENCE = re.compile(r"^( {0,3})(`{3,})\s*(.*)$")


def parse(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, with the heading each sits under."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            indent, ticks, info = len(m.group(1)), m.group(2), m.group(3).split()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not re.match(rf"^ {{0,3}}{ticks}`*\s*$", lines[j]):
                body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
                j += 1
            assert j < len(lines), f"README.md:{i + 1}: a code fence that never closes"
            lang = info[0].lower() if info else ""
            blocks.append(Block(lang, info[1:], "\n".join(body) + "\n", i + 1, section))
            i = j + 1
            continue
        heading = re.match(r"^#{2,3} (.+)$", line)
        if heading:
            section = heading.group(1).strip()
        i += 1
    return blocks


BLOCKS = parse(README.read_text())


def sections() -> dict[str, list[Block]]:
    grouped: dict[str, list[Block]] = {}
    for block in BLOCKS:
        if block.lang in RUNNABLE and "notest" not in block.tags:
            grouped.setdefault(block.section, []).append(block)
    return grouped


# --- the README's shape -------------------------------------------------------------------


def test_every_block_is_run_or_says_why_not() -> None:
    unknown = [f"{b}: '{b.lang}'" for b in BLOCKS if b.lang not in RUNNABLE | NOT_CODE]
    assert not unknown, f"blocks this test does not know how to run (use python, sh or js): {unknown}"
    skipped = {b.first_command: b for b in BLOCKS if "notest" in b.tags}
    unexplained = [f"{b}: {line!r}" for line, b in skipped.items() if line not in NOT_RUN]
    assert not unexplained, f"notest blocks with no reason in NOT_RUN: {unexplained}"
    stale = [line for line in NOT_RUN if line not in skipped]
    assert not stale, f"NOT_RUN names blocks the README no longer has: {stale}"
    runnable = sections()
    named = set(EXPECT) | WITHOUT_DAEMON
    assert named <= set(runnable), f"sections named here with no block to run: {named - set(runnable)}"
    for blocks in runnable.values():
        for i, block in enumerate(blocks):
            if block.file_name is not None:  # a file the reader saves: a later block must run it
                later = [b for b in blocks[i + 1 :] if block.file_name in b.code]
                assert later, f"{block} is saved as {block.file_name}, but no later block in its section runs it"
    by_lang = {lang: sum(b.lang == lang for bs in runnable.values() for b in bs) for lang in RUNNABLE}
    assert all(n > 0 for n in by_lang.values()), by_lang


def slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a markdown file's headings."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_points_only_inside_the_repository() -> None:
    text = README.read_text()
    assert "../" not in text, [line for line in text.splitlines() if "../" in line]
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path = ROOT / target if target else README
        assert path.exists(), f"README links to {target}, which is not in the repository"
        if anchor:
            assert anchor in slugs(path.read_text()), f"README links to {target}#{anchor}: no such heading"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=str)
def test_python_blocks_are_lint_clean(block: Block) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-fix", "--stdin-filename", f"readme_line_{block.line}.py", "-"],
        input=block.code,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"{block}:\n{run.stdout}{run.stderr}"


# --- running the blocks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``/path/to/sidecar/`` stands for: a copy of the TypeScript client's files."""
    root = tmp_path_factory.mktemp("checkout") / "sidecar"
    target = root / "clients" / "typescript"
    target.mkdir(parents=True)
    for name in TS_CLIENT_FILES:
        source = TS_CLIENT / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy2(source, target / name)
    return root


@dataclass
class Runner:
    workdir: Path
    env: dict[str, str]
    socket_path: str
    sandbox: Path
    output: list[str] = field(default_factory=list)

    def run(self, block: Block) -> None:
        name = block.file_name
        if name is not None:  # the reader saves it; a later block runs it
            (self.workdir / name).write_text(block.code)
            return
        if block.lang == "python":
            script = self.workdir / f"readme_line_{block.line}.py"
            script.write_text(block.code)
            self.command(block, [sys.executable, script.name], BLOCK_TIMEOUT_S)
        elif block.lang == "js":
            script = self.workdir / f"readme_line_{block.line}.mjs"
            script.write_text(block.code)
            self.command(block, ["node", script.name], BLOCK_TIMEOUT_S)
        elif block.follow is not None:
            self.follow(block, block.follow)
        else:
            code = block.code.replace(PLACEHOLDER, f"{self.sandbox}/")
            limit = NPM_TIMEOUT_S if "npm " in code else BLOCK_TIMEOUT_S
            self.command(block, ["bash", "-e", "-o", "pipefail", "-c", code], limit)

    def command(self, block: Block, argv: list[str], limit: float) -> None:
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so a timeout ends whatever the block started
        )
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{block} did not finish within {limit} s\n--- stdout\n{out}\n--- stderr\n{err}")
        self.output.append(out)
        assert proc.returncode == 0, f"{block} exited {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"

    def follow(self, block: Block, conversation: str) -> None:
        """A command that runs until Ctrl-C: it shows an event written before it started, then
        one written while it runs, and is still running when Ctrl-C stops it."""
        with Client(self.socket_path) as client:
            client.call("log.append", {"conversation_id": conversation, "type": "readme.before"})
            proc = subprocess.Popen(
                ["bash", "-e", "-c", block.code],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                seen = read_until(proc, b"readme.before", BLOCK_TIMEOUT_S)
                assert "readme.before" in seen, f"{block} did not show {conversation}'s newest event:\n{seen}"
                client.call("log.append", {"conversation_id": conversation, "type": "readme.follow"})
                seen += read_until(proc, b"readme.follow", BLOCK_TIMEOUT_S)
                self.output.append(seen)
                assert "readme.follow" in seen, f"{block} did not show the event appended while it ran:\n{seen}"
                assert proc.poll() is None, f"{block} ended by itself (exit {proc.returncode}); it should follow"
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
                try:
                    proc.wait(timeout=BLOCK_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{block} did not stop on Ctrl-C")
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                proc.stdout.close()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]


def read_until(proc: subprocess.Popen, needle: bytes, limit: float) -> str:
    """Its stdout until ``needle`` appears, it ends, or ``limit`` seconds pass."""
    data = b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        while needle not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                break
            chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


@pytest.mark.parametrize("section", list(sections()), ids=lambda s: s.replace(" ", "_"))
def test_readme_section_runs(section: str, start_daemon, tmp_path: Path, sandbox_root: Path) -> None:
    blocks = sections()[section]
    if any(b.lang == "js" or "npm " in b.code for b in blocks) and not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("Node and npm are needed for this section's blocks")
    daemon = start_daemon()
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = daemon_fixtures.child_env({"SIDECAR_SOCKET": daemon.socket_path, "PYTHONUNBUFFERED": "1"})
    env = {k: v for k, v in env.items() if not k.lower().startswith("npm_") and k != "INIT_CWD"}
    # This interpreter's scripts first (`sidecar`, `python`), as `. .venv/bin/activate` does.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    runner = Runner(workdir, env, daemon.socket_path, sandbox_root)
    for block in blocks:
        runner.run(block)
    printed = "\n".join(runner.output)
    for pattern in EXPECT.get(section, []):
        assert re.search(pattern, printed, re.MULTILINE), f"'{section}' did not print /{pattern}/:\n{printed}"
    # The blocks talked to this daemon: it holds what they wrote.
    with Client(daemon.socket_path) as client:
        conversations = client.call("log.conversations")["conversations"]
    if section in WITHOUT_DAEMON:
        assert conversations == [], f"'{section}' is said to need no daemon, yet wrote to it"
    elif any("log.append" in b.code or "log_append" in b.code for b in blocks):
        assert conversations, f"'{section}' appends, but the daemon it was given holds nothing"
