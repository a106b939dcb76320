"""docs/ARCHITECTURE.md, frontend.md, jobs.md and client.md name only things that exist in the code.

A doc that names a setting, route, file or function the code does not have misleads the
reader, so every code-looking name in single backticks is checked against the code itself:
paths against the repo, UPPER_CASE settings against `Settings`, routes against the app's
route table, identifiers against the source under service/. The JSON field names of the
frontend hook are checked against payloads produced by the real view functions, and the
Mermaid blocks against the diagram kinds Mermaid knows. No servers are started.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import re
from typing import Any

import pytest

from service.api.app import routes
from service.api.errors import error_body
from service.api.routes.stream import present
from service.jobs import state
from service.settings import Settings
from tests.support import ROOT

DOCS = ("docs/ARCHITECTURE.md", "docs/frontend.md", "docs/jobs.md", "docs/client.md")

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
ROUTE = re.compile(r"^(?:(GET|POST|PUT|PATCH|DELETE)\s+)?(/[^\s]*)$")
ENV = re.compile(r"^([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=\S*)?$")
FILE_EXT = re.compile(r"\.(py|md|toml|js|ts|tsx|json|ya?ml|conf|cfg|css|html|txt|tf|lock)$")
PATHISH = re.compile(r"^[\w.-]+(?:/[\w.{}*-]*)+(?::[A-Za-z_][\w.]*)?$|^[\w.-]+" + FILE_EXT.pattern)
IDENT = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?$")
PASCAL = re.compile(r"^[A-Z][a-z0-9]+[A-Z]\w*$")  # DownloadWorker, JobRecord
CAMEL = re.compile(r"^[a-z][a-z0-9]*[A-Z]\w*$")  # jobId, totalFileIds, localStorage

MERMAID_KINDS = {
    "flowchart", "graph", "sequenceDiagram", "classDiagram", "stateDiagram", "stateDiagram-v2",
    "erDiagram", "journey", "gantt", "pie", "quadrantChart", "requirementDiagram", "gitGraph",
    "C4Context", "C4Container", "C4Component", "C4Dynamic", "C4Deployment", "mindmap",
    "timeline", "sankey-beta", "xychart-beta", "block-beta", "packet-beta", "architecture-beta",
    "kanban",
}  # fmt: skip
FLOW_DIRECTIONS = {"TB", "TD", "BT", "RL", "LR"}

# Members of browser / JS / React objects the hook and component use (not API fields).
JS_MEMBERS = {
    "abort", "aborted", "addEventListener", "CLOSED", "catch", "ceil", "close", "current",
    "data", "get", "getItem", "headers", "includes", "isFinite", "json", "length", "message",
    "min", "ok", "parse", "parseFloat", "random", "randomUUID", "readyState", "removeItem",
    "setItem", "signal", "source", "status", "statusText", "stringify", "toFixed",
}  # fmt: skip


# ------------------------------------------------------------------ reading the docs


def read(doc: str) -> str:
    return (ROOT / doc).read_text()


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def inline_code(text: str) -> list[str]:
    """Single-backtick spans of the prose (fenced blocks removed)."""
    return [span.strip() for span in INLINE.findall(FENCE.sub("", text))]


# ------------------------------------------------------------------ what the code has


@functools.cache
def service_source() -> str:
    """All text under service/ (Python, templates, static files), for identifier look-ups."""
    texts = []
    for path in sorted((ROOT / "service").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            try:
                texts.append(path.read_text())
            except UnicodeDecodeError:
                continue
    return "\n".join(texts)


def in_source(name: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", service_source()) is not None


def normalise_route(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0].rstrip("/") or "/")


@functools.cache
def route_table() -> dict[str, set[str]]:
    """Normalised path -> methods, from the app's own route list."""
    table: dict[str, set[str]] = {}
    for route in routes():
        methods = getattr(route, "methods", None) or {"GET"}
        table.setdefault(normalise_route(route.path), set()).update(methods)
    return table


def settings_fields() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


# ------------------------------------------------------------------ checking one name


def problem_with(span: str, defined: str = "") -> str | None:
    """Why a backticked name does not exist, or None (exists, or not code-looking).

    `defined`: the doc's own code blocks; a camelCase name (a JSON field, a browser API, the
    hook) may be found there or under service/.
    """
    if CAMEL.match(span):
        if in_source(span) or re.search(rf"(?<![\w]){re.escape(span)}(?![\w])", defined):
            return None
        return f"{span} is neither under service/ nor in this doc's code blocks"
    route = ROUTE.match(span)
    if route:
        method, path = route.groups()
        methods = route_table().get(normalise_route(path))
        if methods is None:
            return f"route {path} is not in service.api.app.routes()"
        if method and method not in methods:
            return f"route {path} has no {method} (only {sorted(methods)})"
        return None
    env = ENV.match(span)
    if env:
        name = env.group(1)
        if name in settings_fields() or name.startswith("OTEL_"):
            return None
        return f"{name} is not a field of service.settings.Settings"
    if PATHISH.match(span):
        path, _, symbol = span.partition(":")
        first = path.split("/")[0]
        if not ((ROOT / first).exists() or FILE_EXT.search(path)):
            return None  # an S3 key or URL fragment (downloads/..., results/...), not a repo path
        if "{" in path or "*" in path:
            return None
        if not (ROOT / path).exists():
            return f"path {path} does not exist in the repo"
        if symbol and not all(in_source(part) for part in symbol.split(".")):
            return f"{symbol} (in {path}) is not in the source"
        return None
    if IDENT.match(span):
        name = span.removesuffix("()")
        if "." in name or "_" in name or PASCAL.match(name):
            missing = [part for part in name.split(".") if not in_source(part)]
            if missing:
                return f"identifier {name}: {', '.join(missing)} not found under service/"
    return None


def problems(doc: str) -> list[str]:
    text = read(doc)
    code = "\n".join(body for _, body in fenced(text))
    return [f"`{span}`: {why}" for span in inline_code(text) if (why := problem_with(span, code))]


@pytest.mark.parametrize("doc", DOCS)
def test_backticked_names_exist(doc: str) -> None:
    spans = inline_code(read(doc))
    assert len(spans) > 30, f"{doc}: too few code names found; is the parser broken?"
    assert problems(doc) == []


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("`QUEUE_MAX_DEPHT`", "Settings"),
        ("`GET /v1/download/stauts/{jobId}`", "routes()"),
        ("`DELETE /v1/download/initiate`", "has no DELETE"),
        ("`service/jobs/workr.py`", "does not exist"),
        ("`service/jobs/download.py:rnu`", "not in the source"),
        ("`lifecycle.finsh`", "finsh"),
        ("`DownloadWorkr`", "DownloadWorkr"),
        ("`totalFileId`", "neither"),
    ],
)
def test_checker_catches_misspellings(span: str, expected: str) -> None:
    found = [why for name in inline_code(span) if (why := problem_with(name))]
    assert found and expected in found[0]


def test_checker_accepts_real_names() -> None:
    spans = "`QUEUE_MAX_DEPTH` `GET /v1/download/status/{jobId}` `service/jobs/worker.py` `lifecycle.finish`"
    assert [problem_with(span) for span in inline_code(spans)] == [None] * 4


# ------------------------------------------------------------------ Mermaid


def mermaid_blocks(doc: str) -> list[str]:
    return [body for lang, body in fenced(read(doc)) if lang == "mermaid"]


def diagram_kind(body: str) -> tuple[str, list[str]]:
    """The diagram keyword (after optional front matter and %% comments) and the other lines."""
    lines = [line.strip() for line in body.splitlines()]
    if lines and lines[0] == "---":
        lines = lines[lines.index("---", 1) + 1 :]
    lines = [line for line in lines if line and not line.startswith("%%")]
    return lines[0], lines[1:]


def mermaid_problems(body: str) -> list[str]:
    header, lines = diagram_kind(body)
    kind, *rest = header.split()
    found = []
    if kind not in MERMAID_KINDS:
        found.append(f"{kind!r} is not a Mermaid diagram keyword")
    if kind in {"flowchart", "graph"}:
        if rest and rest[0] not in FLOW_DIRECTIONS:
            found.append(f"{rest[0]!r} is not a flowchart direction")
        opened = sum(1 for line in lines if line.startswith("subgraph "))
        closed = sum(1 for line in lines if line == "end")
        if opened != closed:
            found.append(f"{opened} subgraph vs {closed} end")
    if kind == "sequenceDiagram":
        declared = {m.group(1) for line in lines if (m := re.match(r"(?:participant|actor)\s+(\w+)", line))}
        for line in lines:
            message = re.match(r"(\w+)\s*-[-)x>]*[>x)]\s*(\w+)\s*:", line)
            if message:
                missing = [p for p in message.groups() if p not in declared]
                found += [f"undeclared participant {p} in {line!r}" for p in missing]
        found += [f"';' ends a statement in Mermaid: {line!r}" for line in lines if ";" in line]
        blocks = sum(1 for line in lines if re.match(r"(loop|alt|opt|par|critical|break|rect)\b", line))
        ends = sum(1 for line in lines if line == "end")
        if blocks != ends:
            found.append(f"{blocks} loop/alt/opt blocks vs {ends} end")
    return found


def test_architecture_has_its_diagrams() -> None:
    kinds = [diagram_kind(body)[0].split()[0] for body in mermaid_blocks("docs/ARCHITECTURE.md")]
    assert sum(kind in {"flowchart", "graph"} for kind in kinds) >= 1, kinds  # the architecture
    assert kinds.count("sequenceDiagram") >= 2, kinds  # fast and slow download


@pytest.mark.parametrize("doc", DOCS)
def test_mermaid_blocks_are_valid(doc: str) -> None:
    for body in mermaid_blocks(doc):
        assert mermaid_problems(body) == []


def test_mermaid_checker_catches_mistakes() -> None:
    assert mermaid_problems("sequencediagram\n  A->>B: hi\n")
    assert mermaid_problems("sequenceDiagram\n  participant A\n  participant B\n  A->>C: hi\n")
    assert mermaid_problems("flowchart XY\n  A --> B\n")
    assert mermaid_problems("sequenceDiagram\n  participant A\n  Note over A: closed; gone\n")
    assert mermaid_problems("sequenceDiagram\n  participant A\n  participant B\n  A->>B: hi\n") == []


# ------------------------------------------------------------------ the hook's JSON fields


class Recorder:
    """Stands in for a Redis pipeline: keeps what the state functions would XADD."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, str]]] = []

    def xadd(self, key: str, fields: dict[str, str], **_: Any) -> None:
        self.events.append((f"{len(self.events) + 1}-0", fields))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # hset, expire, zadd, publish, ...


def view_status_body() -> Any:
    """status_body, wherever it lives now (service/jobs/view.py, formerly the downloads routes)."""
    for module in ("service.jobs.view", "service.api.routes.downloads"):
        try:
            return importlib.import_module(module).status_body
        except (ImportError, AttributeError):
            continue
    raise AssertionError("status_body not found")


def tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text())


def dict_keys(node: ast.Dict) -> set[str]:
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def file_result() -> dict[str, Any]:
    """A per-file result shaped as the worker builds it (the dict literal with `file_id`)."""
    for node in ast.walk(tree("service/jobs/download.py")):
        if isinstance(node, ast.Dict) and "file_id" in dict_keys(node):
            return {key: 1 for key in dict_keys(node)}
    raise AssertionError("no per-file result dict in service/jobs/download.py")


def initiate_keys() -> set[str]:
    """Keys of the dict literal that `initiate` answers with (JSONResponse(...))."""
    for node in ast.walk(tree("service/api/routes/downloads.py")):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "initiate":
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "id", None) == "JSONResponse"
                    and call.args
                    and isinstance(call.args[0], ast.Dict)
                ):
                    return dict_keys(call.args[0])
    raise AssertionError("initiate's JSONResponse body not found")


def status_update_fields() -> dict[str, set[str]]:
    """Field names the worker passes to state.queue_update for non-terminal events."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "service").rglob("*.py"):
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            literals = {
                target.id: assign.value
                for assign in ast.walk(func)
                if isinstance(assign, ast.Assign | ast.AnnAssign) and isinstance(assign.value, ast.Dict)
                for target in (assign.targets if isinstance(assign, ast.Assign) else [assign.target])
                if isinstance(target, ast.Name)
            }
            for call in ast.walk(func):
                if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "queue_update"):
                    continue
                # the event is named by the new status: a `status=` keyword or a spread dict's "status"
                names = {kw.arg for kw in call.keywords if kw.arg}
                values = {kw.arg: kw.value for kw in call.keywords if kw.arg}
                for kw in call.keywords:
                    if kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id in literals:
                        spread = literals[kw.value.id]
                        names |= dict_keys(spread)
                        for key, value in zip(spread.keys, spread.values, strict=True):
                            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                                values[key.value] = value
                name = getattr(values.get("status"), "attr", None)
                if name not in {"QUEUED", "PROCESSING", "RETRYING"}:
                    continue
                found.setdefault(getattr(state, name), set()).update(names)
    return found


def flat_keys(value: Any) -> set[str]:
    """Every key at any depth (lists: their items)."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in flat_keys(v)}
    if isinstance(value, list):
        return {k for item in value for k in flat_keys(item)}
    return set()


def sse(name: str, data: dict[str, Any]) -> Any:
    return present("job-1", ("1-0", {"event": name, "data": json.dumps(data)}))


@functools.cache
def real_payloads() -> dict[str, set[str]]:
    """Interface name in the hook -> field names the service really sends."""
    file = file_result()
    job = state.JobRecord(
        id="job-1", status=state.COMPLETED, file_ids=[70000], created_at=state.now_iso(), done=1, files=[file]
    )
    snapshot = view_status_body()(job)

    recorder = Recorder()
    state.queue_create(recorder, job, 60, track_client=True)
    for event, fields in status_update_fields().items():
        state.queue_update(recorder, job.id, 60, **{**{name: "x" for name in fields}, "status": event})
    state.queue_file_done(recorder, job.id, 60, file, 1, 1)
    status_events, progress_events = set(), set()
    for entry in recorder.events:
        shown = present(job.id, entry)
        keys = flat_keys(json.loads(shown.data))
        (progress_events if shown.event == "progress" else status_events).update(keys)
    terminal = flat_keys(json.loads(sse(state.COMPLETED, {"result_size": "1"}).data))
    assert status_update_fields(), "found no queue_update calls for status events"
    return {
        "InitiateResponse": initiate_keys(),
        "JobStatus": flat_keys(snapshot),
        "FileResult": set(file),
        "StatusEvent": status_events,
        "JobProgressEvent": progress_events,
        "TerminalEvent": terminal,
        "ApiErrorBody": set(error_body(400, "x", "r")),
    }


def sse_event_names() -> set[str]:
    names = {sse(name, {"done": 1, "total": 1}).event for name in (*state.TERMINAL, "progress", "processing")}
    stream_py = tree("service/api/routes/stream.py")
    for node in ast.walk(stream_py):
        if isinstance(node, ast.keyword) and node.arg == "event" and isinstance(node.value, ast.Constant):
            names.add(node.value.value)
    return names


def ts_blocks() -> list[str]:
    return [body for lang, body in fenced(read("docs/frontend.md")) if lang in {"ts", "tsx", "typescript"}]


def interfaces(code: str) -> dict[str, set[str]]:
    """`interface Name { ... }` -> field names at any depth of its body."""
    return {
        name: set(re.findall(r"(\w+)\??\s*:", body))
        for name, body in re.findall(r"interface\s+(\w+)\s*\{(.*?)\n\}", code, re.S)
    }


def strip_comments(code: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", code, flags=re.S)


def hook_problems(code: str) -> list[str]:
    """JSON field names, SSE event names and routes in TypeScript that the service lacks."""
    real = real_payloads()
    found = []
    declared = interfaces(code)
    for name, fields in declared.items():
        if name not in real:
            found.append(f"interface {name} is not mapped to a real payload")
            continue
        found += [f"{name}.{field} is not in the real JSON" for field in sorted(fields - real[name])]
    body = strip_comments(code)
    body = re.sub(r"process\.env\.\w+", "", body)
    local = set(re.findall(r"(\w+)\??\s*:", body))
    local |= set(re.findall(r"\b(?:const|let|var|function|class|readonly)\s+(\w+)", body))
    allowed = set().union(*real.values()) | local | JS_MEMBERS
    accessed = set(re.findall(r"(?<!\.)\.(?!\.)\s*([A-Za-z_]\w*)", body))
    unknown = sorted(accessed - allowed)
    found += [f"member .{name} is neither API JSON nor a known JS member" for name in unknown]
    events = set(re.findall(r"""on<\w+>\(\s*["'](\w+)["']""", body))
    events |= {n for m in re.findall(r"TERMINAL = \[(.*?)\]", body) for n in re.findall(r'"(\w+)"', m)}
    found += [f"SSE event {name!r} is not sent by the service" for name in sorted(events - sse_event_names())]
    for path in re.findall(r"/v1/[\w/{}.-]*", re.sub(r"\$\{[^}]*\}", "{}", body)):
        if normalise_route(path) not in route_table():
            found.append(f"route {path} is not in service.api.app.routes()")
    return found


def test_hook_uses_the_real_json() -> None:
    code = "\n".join(ts_blocks())
    assert "function useDownloadJob" in code
    declared = interfaces(code)
    assert set(declared) == set(real_payloads()), "the hook should type every payload it reads"
    used = set().union(*declared.values())
    assert {"jobId", "statusUrl", "progress", "percent", "downloadUrl", "totalFileIds"} <= used
    assert hook_problems(code) == []


def test_hook_checker_catches_misspellings() -> None:
    code = "\n".join(ts_blocks())
    for good, bad in [
        ("  downloadUrl: string | null;\n}", "  downloadURL: string | null;\n}"),
        ("body.totalFileIds", "body.totalFiles"),
        ('on<JobProgressEvent>("progress"', 'on<JobProgressEvent>("progres"'),
        ("`${baseUrl}/v1/download/status/", "`${baseUrl}/v1/download/state/"),
    ]:
        assert good in code, good
        assert hook_problems(code.replace(good, bad, 1)), bad


def test_initiate_keys_come_from_the_route() -> None:
    """The AST reading is not vacuous: it finds what the route sends."""
    assert {"jobId", "statusUrl", "streamUrl", "fileUrl"} <= initiate_keys()


# ------------------------------------------------------------------ Redis keys


def keys_module_names() -> set[str]:
    """Every `delineate:` key service/keys.py defines, prefix stripped; functions are called with
    their parameter names as placeholders (`job:{job_id}`)."""
    from service import keys

    found: set[str] = set()
    for name, value in vars(keys).items():
        if name.startswith("_") or name == "rq_queue":
            continue
        if isinstance(value, str) and value.startswith(keys.PREFIX) and value != keys.PREFIX:
            found.add(value)
        elif inspect.isfunction(value) and value.__module__ == keys.__name__:
            found.add(value(*(f"{{{p}}}" for p in inspect.signature(value).parameters)))
    return {key.removeprefix(keys.PREFIX) for key in found}


def key_table_names(text: str) -> set[str]:
    """The backticked names in the first column of docs/jobs.md's key table (before `rq:*`)."""
    section = text.split("## Redis keys", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in inline_code(row.split("|")[1]) if name != "rq:*"}


def test_the_key_table_mirrors_service_keys() -> None:
    from service import keys

    text = read("docs/jobs.md")
    assert key_table_names(text) == keys_module_names()
    rq_row = next(line for line in text.splitlines() if line.startswith("| `rq:*`"))
    assert all(f"`{queue}`" in rq_row for queue in keys.QUEUES)


def test_the_key_table_check_catches_a_missing_key() -> None:
    text = read("docs/jobs.md").replace("| `reaper:lock` |", "| `reaper:lokc` |")
    assert key_table_names(text) != keys_module_names()


# a key spelled out, the key prefix used, or a download queue named (the webhook queue's name is
# also the CLI's `delineate webhooks` subcommand, so it cannot be told apart here)
KEY_LITERAL = re.compile(r"""["']delineate:(?! )|\bPREFIX\b|["']downloads-(small|large)["']""")


def test_no_key_is_spelled_outside_service_keys() -> None:
    """Keys and queue names are spelled in service/keys.py only (one place for every name)."""
    spelled = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "service").rglob("*.py")
        if path.name != "keys.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if KEY_LITERAL.search(line)
    ]
    assert spelled == []


def test_jobs_never_import_webhooks() -> None:
    """Imports run down the house: webhooks/ builds on jobs/, never the reverse (the webhook
    delivery is wired into lifecycle.finish by service/runtime.py)."""
    back_up = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "service" / "jobs").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
        )
        if name.startswith("service.webhooks")
    ]
    assert back_up == []
