"""Boot measurements collected during the run and printed as one table at the end (conftest)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.boot.runner import BootResult


@dataclass(frozen=True)
class Row:
    label: str
    cloud_init_done: float | None
    online: float | None
    apt_packages: int
    apt_bytes: int


ROWS: list[Row] = []


def record(label: str, result: BootResult) -> None:
    ROWS.append(
        Row(
            label,
            result.cloud_init_seconds,
            result.settle_seconds if result.settled else None,
            result.apt_installed,
            result.apt_bytes,
        )
    )


def table() -> str:
    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    lines = [
        "| boot | start -> cloud-init done | start -> agent online | apt packages | apt bytes |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.label} | {secs(r.cloud_init_done)} | {secs(r.online)} | {r.apt_packages} "
        f"| {r.apt_bytes / 1e6:.1f} MB |"
        for r in ROWS
    ]
    return "\n".join(lines)
