"""The plan as JSON (the artifact: every server, stable) and as markdown (the PR comment).

GitHub caps a comment at 65,536 characters, so the markdown is built in order of importance and
stops before MARKDOWN_LIMIT: header and counts, the summary grouped by identical change, every
destroy, the errors, then per-server details while they fit, then a line naming how many servers
were left out. Nothing here prints a value a file did not hold in plain text, and every error is
passed through the fleet's redaction once more.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from citrus_deploy.gitops.credentials import redact
from citrus_deploy.gitops.plan import Change, Plan, ServerPlan

MARKDOWN_LIMIT = 60_000
# Room kept for the closing lines (what was left out), so they always fit.
_RESERVE = 600
_PLAIN = re.compile(r"[A-Za-z0-9._:/+=-]*")
_DETAIL_ORDER = {"replace": 0, "create": 1, "update": 2}
_ACTION_TITLES = {
    "create": "Create",
    "update": "Update",
    "replace": "Replace",
    "destroy": "Destroy",
    "unchanged": "Unchanged",
    "error": "Errors",
}


def to_json(plan: Plan) -> str:
    """Stable text: sorted keys, servers by name, one server per line, a final newline.

    Each value goes through json's C encoder (compact, sorted); only the top level and the
    servers list are laid out by hand, so the file diffs line by line per server. An indenting
    json.dumps runs the pure-Python encoder, which took longer than the whole plan.
    """
    data = plan.to_json()
    lines = []
    for key in sorted(data):
        if key == "servers":
            servers = ",\n".join(_compact(server) for server in data["servers"])
            value = f"[\n{servers}\n]" if servers else "[]"
        else:
            value = _compact(data[key])
        lines.append(f"{_compact(key)}: {value}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def to_markdown(plan: Plan, limit: int = MARKDOWN_LIMIT) -> str:
    out = _Budget(limit - _RESERVE)
    summary = plan.summary()
    out.force(f"## GitOps plan for `{_code(plan.fleet)}`")
    out.force("")
    out.force(
        f"Repository `{_code(plan.repository)}` · commit `{_code(plan.commit[:12])}` · "
        f"program `{plan.program_hash[:12]}`"
    )
    out.force("")
    out.force(" · ".join(f"**{_ACTION_TITLES[a]}: {n}**" for a, n in summary.items()))
    out.force("")

    out.force("### Summary")
    out.force("")
    groups = _groups(plan.servers)
    shown_groups = 0
    for line in groups:
        if not out.add(f"- {line}"):
            break
        shown_groups += 1
    if shown_groups < len(groups):
        out.force(f"- … {len(groups) - shown_groups} more kinds of change: see the JSON artifact")
    if not groups:
        out.force("- nothing in the fleet folder and nothing deployed from it")

    left_out = 0
    destroys = [s for s in plan.servers if s.action == "destroy"]
    if destroys:
        out.add("")
        out.add(f"### Destroy ({len(destroys)}): files removed, destroyed only by `apply --prune`")
        out.add("")
        for i, server in enumerate(destroys):
            reasons = "; ".join(server.reasons[1:])
            if not out.add(
                f"- `{_code(server.name)}`" + (f": {_text(reasons)}" if reasons else "")
            ):
                left_out += len(destroys) - i
                break

    errors = [*plan.errors]
    for server in plan.servers:
        if server.action == "error":
            where = server.file or server.name
            errors += [e if e.startswith(f"{where}:") else f"{where}: {e}" for e in server.errors]
    if errors:
        out.add("")
        out.add(f"### Errors ({len(errors)}): the plan cannot be applied")
        out.add("")
        for i, error in enumerate(errors):
            if not out.add(f"- `{_code(redact(error))}`"):
                left_out += len(errors) - i
                break

    # Replaces first: a new droplet (a new IP) is what a reviewer most needs to see.
    changed = sorted(
        (s for s in plan.servers if s.action in _DETAIL_ORDER),
        key=lambda s: (_DETAIL_ORDER[s.action], s.name),
    )
    if changed:
        out.add("")
        out.add("### Changes")
        out.add("")
        out.add("| Server | Action | Changes | Why |")
        out.add("|---|---|---|---|")
        for i, server in enumerate(changed):
            if not out.add(_row(server)):
                left_out += len(changed) - i
                break

    if left_out or out.full:
        out.force("")
        out.force(
            f"_{left_out} more {'entry' if left_out == 1 else 'entries'} left out to keep this "
            f"under {MARKDOWN_LIMIT:,} characters: the JSON artifact holds every server._"
        )
    return "\n".join(out.lines) + "\n"


class _Budget:
    """Lines of text that stop growing at a character limit (`force` ignores it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.lines: list[str] = []
        self.full = False

    def add(self, line: str) -> bool:
        if self.full or self.size + len(line) + 1 > self.limit:
            self.full = True
            return False
        self.force(line)
        return True

    def force(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1


def _groups(servers: Iterable[ServerPlan]) -> list[str]:
    """One line per kind of change, biggest first: `412 servers: size a -> b`."""
    counts: Counter[tuple[int, str]] = Counter()
    for server in servers:
        order, text = _group_of(server)
        counts[(order, text)] += 1
    ranked = sorted(counts.items(), key=lambda item: (item[0][0], -item[1], item[0][1]))
    return [text.format(n=n, s=_plural(n)) for (_order, text), n in ranked]


def _group_of(server: ServerPlan) -> tuple[int, str]:
    """(order of the group, line template with {n} and {s})."""
    changes = ", ".join(_change(c) for c in server.changes)
    shared = [r for r in server.reasons if r.startswith(("program changed", "adopts a server"))]
    what = "; ".join(filter(None, [changes, *map(_text, shared)]))
    if server.action == "update":
        return 0, "{n} server{s}: " + _escape_braces(what or "redeployed")
    if server.action == "replace":
        return 0, "{n} server{s} replaced: " + _escape_braces(what)
    if server.action == "create":
        return 1, "{n} server{s} created"
    if server.action == "destroy":
        return 2, "{n} server{s} destroyed (file removed; only with `apply --prune`)"
    if server.action == "error":
        return 3, "{n} server{s} with errors"
    return 4, "{n} server{s} unchanged"


def _row(server: ServerPlan) -> str:
    changes = "<br>".join(_change(c, code=True) for c in server.changes) or "—"
    if server.action == "create":
        changes = (
            ", ".join(
                f"{key} {_value(value, code=True)}"
                for key, value in sorted((server.config or {}).items())
                if key != "serverName"
            )
            or "defaults"
        )
    why = [_text(r) for r in server.reasons]
    if server.preview is not None:
        why.append(_preview(server.preview))
    return (
        f"| `{_code(server.name)}` | {server.action} | {_cell(changes)} | "
        f"{_cell('<br>'.join(why) or '—')} |"
    )


def _preview(preview: dict[str, Any]) -> str:
    if preview.get("state") != "succeeded":
        error = preview.get("error") or preview.get("state") or "no result"
        return f"engine preview: {_text(redact(str(error)))}"
    summary = preview.get("summary") or {}
    ops = ", ".join(f"{op} {n}" for op, n in sorted(summary.items()) if n and op != "same")
    diffs = sorted(
        {
            d
            for step in preview.get("steps") or []
            for d in step.get("diffs") or []
            if isinstance(d, str)
        }
    )
    text = f"engine preview: {ops or 'no changes'}"
    return text + (f" ({', '.join(map(_text, diffs))})" if diffs else "")


def _change(change: Change, *, code: bool = False) -> str:
    return f"{change.key} {_value(change.old, code=code)} -> {_value(change.new, code=code)}"


def _value(value: Any, *, code: bool = False) -> str:
    """A config value for markdown: plain when harmless, else in a code span."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
    if text and _PLAIN.fullmatch(text) and not code:
        return text
    return f"`{_code(text)}`" if text else '""'


def _code(text: str) -> str:
    """Text for inside a code span in a table: no backticks, pipes or line breaks."""
    return text.replace("`", "'").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _text(text: str) -> str:
    """Free text (reasons) with the characters markdown would act on escaped."""
    return re.sub(r"([\\`*_\[\]<|#@~])", r"\\\1", text.replace("\n", " "))


def _cell(text: str) -> str:
    return text.replace("\n", " ")


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _plural(n: int) -> str:
    return "" if n == 1 else "s"
