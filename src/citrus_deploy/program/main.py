"""The Pulumi program: one stack = one server. Reads the stack config, builds one AgentServer."""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as digitalocean

from citrus_deploy.program.component import AgentServer
from citrus_deploy.program.config import InvalidConfig, load


def main() -> None:
    try:
        settings = load(
            pulumi.Config().get,
            stack=pulumi.get_stack(),
            get_provider=pulumi.Config("digitalocean").get,
        )
    except InvalidConfig as exc:
        # Stop before any resource is registered, with every bad field named.
        raise pulumi.RunError(str(exc)) from None

    # An explicit provider so the old DO_API_TOKEN keeps working and the token is a secret in state.
    provider = digitalocean.Provider(
        "digitalocean",
        token=pulumi.Output.secret(settings.do_token),
        api_endpoint=settings.do_api_endpoint,
    )
    server = AgentServer(
        "agent-server", settings.args, opts=pulumi.ResourceOptions(providers=[provider])
    )

    pulumi.export("serverName", server.server_name)
    pulumi.export("dropletId", server.droplet_id)
    pulumi.export("ipv4Address", server.ipv4_address)
    pulumi.export("agentId", server.agent_id)
    pulumi.export("status", server.status)
