"""In-process stand-ins for the two resource plugins that cannot run here: random, DigitalOcean.

They answer the same calls as a provider plugin (check/diff/create/read/update/delete, with a
`preview` flag, as plugins that support previews do), on values already stripped of secrets.
DigitalOcean's side is a small JSON "cloud" file beside the stacks' state: droplets created by
one deployment are seen by the next, and a test can delete one behind the engine's back or
rotate the account's token (only the tokens listed in `tokens`, as SHA-256, are accepted; with
no list, any token is).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import random
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from citrus_deploy.standin.provider_host import Diff, ProviderError
from citrus_deploy.standin.wire import UNKNOWN, Props, contains_unknown


def urn_type(urn: str) -> str:
    """`urn:pulumi:stack::project::parent$type::name` -> type."""
    return urn.split("::")[2].split("$")[-1]


def _changed(old_inputs: Props, news: Props) -> list[str]:
    keys = {k for k in {*old_inputs, *news} if not k.startswith("__")}
    return sorted(
        k for k in keys if old_inputs.get(k) != news.get(k) or contains_unknown(news.get(k))
    )


class FakeRandom:
    """pulumi-random: RandomUuid and RandomBytes; every input forces a replacement."""

    def check(self, urn: str, olds: Props, news: Props) -> tuple[Props, list[tuple[str, str]]]:
        return news, []

    def diff(self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props) -> Diff:
        changed = _changed(old_inputs, news)
        return Diff(bool(changed), changed, changed=changed)

    def create(self, urn: str, news: Props, *, preview: bool = False) -> tuple[str, Props]:
        if urn_type(urn) == "random:index/randomUuid:RandomUuid":
            value = UNKNOWN if preview else str(uuid.uuid4())
            return ("" if preview else value), {**news, "result": value}
        length = int(news.get("length", 0)) if not contains_unknown(news.get("length")) else 0
        if preview:
            return "", {**news, "hex": UNKNOWN, "base64": UNKNOWN}
        raw = secrets.token_bytes(length)
        return "none", {**news, "hex": raw.hex(), "base64": base64.b64encode(raw).decode()}

    def read(
        self, urn: str, id_: str, outputs: Props, inputs: Props
    ) -> tuple[str, Props, Props | None]:
        return id_, outputs, None

    def update(
        self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props
    ) -> Props:
        raise ProviderError(f"Update of {urn}: random resources are replaced, never updated")

    def delete(self, urn: str, id_: str, outputs: Props, inputs: Props) -> None:
        return None


# Droplet arguments DigitalOcean cannot change in place (the provider's ForceNew fields).
DROPLET_FORCE_NEW = frozenset({"image", "region", "userData", "vpcUuid", "sshKeys", "monitoring"})


# What DigitalOcean sets on a droplet, not its inputs.
DROPLET_COMPUTED = ("ipv4Address", "status", "dropletUrn")


class FakeDigitalOcean:
    """`digitalocean.Droplet` against the cloud file, authenticated with the provider's token."""

    def __init__(self, cloud_file: Path, *, token: str | None) -> None:
        self.cloud_file = cloud_file
        self.token = token

    @contextlib.contextmanager
    def _cloud(self) -> Iterator[dict[str, Any]]:
        """The cloud's data, locked against other engines (workers) for the block."""
        self.cloud_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cloud_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = (
                json.loads(self.cloud_file.read_text())
                if self.cloud_file.exists()
                else {"droplets": {}}
            )
            yield data
            tmp = self.cloud_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.cloud_file)

    def _authorize(self, data: dict[str, Any], what: str) -> None:
        accepted = data.get("tokens")
        digest = hashlib.sha256((self.token or "").encode()).hexdigest()
        if not self.token or (accepted is not None and digest not in accepted):
            raise ProviderError(
                f'{what}: 401 (request "{uuid.uuid4()}") Unable to authenticate you'
            )

    def check(self, urn: str, olds: Props, news: Props) -> tuple[Props, list[tuple[str, str]]]:
        missing = [
            (k, "Missing required property") for k in ("image", "region", "size") if k not in news
        ]
        return news, missing

    def diff(self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props) -> Diff:
        changed = _changed(old_inputs, news)
        replaces = [k for k in changed if k in DROPLET_FORCE_NEW]
        return Diff(bool(changed), replaces, changed=changed)

    def create(self, urn: str, news: Props, *, preview: bool = False) -> tuple[str, Props]:
        if preview:
            computed = {"ipv4Address": UNKNOWN, "status": UNKNOWN, "dropletUrn": UNKNOWN}
            return "", {**news, **computed}
        with self._cloud() as data:
            self._authorize(data, "Error creating droplet: POST /v2/droplets")
            droplet_id = str(random.randint(10**8, 10**9 - 1))  # noqa: S311 (an id, not a secret)
            outs = {
                **news,
                "ipv4Address": f"203.0.113.{random.randint(1, 254)}",  # noqa: S311 TEST-NET-3
                "status": "active",
                "dropletUrn": f"do:droplet:{droplet_id}",
            }
            data["droplets"][droplet_id] = outs
        return droplet_id, outs

    def read(
        self, urn: str, id_: str, outputs: Props, inputs: Props
    ) -> tuple[str, Props, Props | None]:
        with self._cloud() as data:
            self._authorize(data, f"Error retrieving droplet: GET /v2/droplets/{id_}")
            found = data["droplets"].get(id_)
        return (id_, found, None) if found is not None else ("", {}, None)

    def update(
        self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props
    ) -> Props:
        with self._cloud() as data:
            self._authorize(data, f"Error updating droplet: PUT /v2/droplets/{id_}")
            if id_ not in data["droplets"]:
                raise ProviderError(
                    f"Error updating droplet ({id_}): 404 The resource was not found"
                )
            # The new inputs as they are (a key left out is unset), the droplet's own outputs
            computed = {k: data["droplets"][id_][k] for k in DROPLET_COMPUTED}
            outs = {**news, **computed}
            data["droplets"][id_] = outs
        return outs

    def delete(self, urn: str, id_: str, outputs: Props, inputs: Props) -> None:
        with self._cloud() as data:
            self._authorize(data, f"Error deleting droplet: DELETE /v2/droplets/{id_}")
            data["droplets"].pop(id_, None)


def accept_only(cloud_file: Path, *tokens: str) -> None:
    """Rotates the fake account's tokens: from now on only these are accepted."""
    cloud = FakeDigitalOcean(cloud_file, token=None)
    with cloud._cloud() as data:
        data["tokens"] = [hashlib.sha256(t.encode()).hexdigest() for t in tokens]


def droplets(cloud_file: Path) -> dict[str, Any]:
    """The fake account's droplets by id."""
    if not cloud_file.exists():
        return {}
    found: dict[str, Any] = json.loads(cloud_file.read_text())["droplets"]
    return found
