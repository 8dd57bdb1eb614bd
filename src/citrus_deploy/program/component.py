"""AgentServer: credentials, agent row, droplet booting the agent, server row, in that order."""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_random as random

from citrus_deploy.program.config import AgentServerArgs
from citrus_deploy.program.render import BootValues, render
from citrus_deploy.program.rows import AgentRow, ServerRow

AGENT_KEY_BYTES = 32
# Config keys whose change makes DigitalOcean replace the droplet (a new droplet, a new IP): the
# droplet arguments the provider cannot update in place. `citrus-deploy gitops plan` shows a
# change to one as a replace. engineWsUrl, agentRepoUrl and agentRepoRef join them only for a
# stack with replaceOnBootScriptChange (they change user_data, ignored otherwise; see
# _create_droplet).
REPLACE_KEYS = frozenset({"region", "image", "sshKeys", "vpcUuid", "monitoring"})


class AgentServer(pulumi.ComponentResource):
    """One DigitalOcean droplet whose boot script installs a Citrus agent with its own credentials.

    The agent key is drawn with RandomBytes rather than RandomId: a RandomId's resource id is the
    key itself in base64, and resource ids are stored in state in clear; RandomBytes marks its
    values secret and has no such id.
    """

    server_name: pulumi.Output[str]
    droplet_id: pulumi.Output[str]
    ipv4_address: pulumi.Output[str]
    agent_id: pulumi.Output[str]
    status: pulumi.Output[str]

    def __init__(
        self, name: str, args: AgentServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("citrus:index:AgentServer", name, None, opts)
        self._prefix = name
        self._args = args

        agent_id, agent_key = self._create_credentials()
        self.agent_row = AgentRow(
            f"{name}-agent-row",
            agent_id=agent_id,
            key=agent_key,
            agent_name=args.agent_name,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.droplet = self._create_droplet(self.agent_row.agentId, agent_key)
        self.server_row = ServerRow(
            f"{name}-server-row",
            server_name=args.server_name,
            droplet_id=self.droplet.id,
            region=args.region,
            size=args.size,
            agent_id=self.agent_row.agentId,
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.server_name = pulumi.Output.from_input(args.server_name)
        self.droplet_id = self.droplet.id
        self.ipv4_address = self.droplet.ipv4_address
        self.agent_id = self.agent_row.agentId
        self.status = self.server_row.status
        self.register_outputs(
            {
                "serverName": self.server_name,
                "dropletId": self.droplet_id,
                "ipv4Address": self.ipv4_address,
                "agentId": self.agent_id,
                "status": self.status,
            }
        )

    def _create_credentials(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        uuid = random.RandomUuid(
            f"{self._prefix}-agent-id", opts=pulumi.ResourceOptions(parent=self)
        )
        key = random.RandomBytes(
            f"{self._prefix}-agent-key",
            length=AGENT_KEY_BYTES,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return uuid.result, pulumi.Output.secret(key.hex)

    def _render_boot_script(self, creds: list[str]) -> str:
        args = self._args
        return render(
            BootValues(
                agent_id=creds[0],
                agent_key=creds[1],
                engine_ws_url=args.engine_ws_url,
                repo_url=args.agent_repo_url,
                repo_ref=args.agent_repo_ref,
                github_token=args.github_token,
                boot_report_url=args.boot_report_url,
            )
        )

    def _create_droplet(
        self, agent_id: pulumi.Output[str], agent_key: pulumi.Output[str]
    ) -> digitalocean.Droplet:
        args = self._args
        script: pulumi.Output[str] = pulumi.Output.all(agent_id, agent_key).apply(
            self._render_boot_script
        )
        user_data: pulumi.Output[str] = pulumi.Output.secret(script)
        # A changed user_data forces DigitalOcean to replace the droplet. A new version of the boot
        # script must not destroy running servers on the next `up`, so it is ignored unless the
        # stack opts in with replaceOnBootScriptChange.
        ignore = [] if args.replace_on_boot_script_change else ["userData"]
        return digitalocean.Droplet(
            f"{self._prefix}-droplet",
            name=args.server_name,
            region=args.region,
            size=args.size,
            image=args.image,
            user_data=user_data,
            ssh_keys=args.ssh_keys or None,
            tags=args.tags or None,
            vpc_uuid=args.vpc_uuid,
            monitoring=args.monitoring,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=ignore),
        )
