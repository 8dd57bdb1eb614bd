#!/usr/bin/env python3
"""Posts the GitOps plan of a pull request as ONE comment, edited in place on every push.

The comment is the github-actions bot's comment whose body starts with MARKER. GitHub is reached
through `gh api` with the token in GH_TOKEN (never on a command line). Standard library only, so
it runs even when installing the project failed: the comment then says no plan was made, rather
than keep showing the plan of an older commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- citrus-gitops-plan -->"
BOT = "github-actions[bot]"  # the author of comments made with a workflow's GITHUB_TOKEN
MAX_CHARS = 65_536  # GitHub refuses a longer comment body
PAGE = 100


class GhError(Exception):
    """`gh api` failed; the message is gh's own (it never holds the token)."""


def gh(path: str, *, method: str = "GET", payload: dict[str, Any] | None = None) -> Any:
    """One GitHub API call through `gh api`; the answer's JSON."""
    argv = ["gh", "api", "--method", method, path]
    if payload is not None:
        argv += ["--input", "-"]
    done = subprocess.run(
        argv,
        input=None if payload is None else json.dumps(payload),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise GhError(f"gh api {method} {path}: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def find_comment(repo: str, pr: int) -> int | None:
    """The id of the plan comment on the pull request, the oldest if several."""
    page = 1
    while True:
        comments = gh(f"repos/{repo}/issues/{pr}/comments?per_page={PAGE}&page={page}")
        for comment in comments:
            author = (comment.get("user") or {}).get("login")
            if author == BOT and str(comment.get("body") or "").startswith(MARKER):
                return int(comment["id"])
        if len(comments) < PAGE:
            return None
        page += 1


def render(*, commit: str, plan: str | None, outcome: str, run_url: str, artifact: str) -> str:
    """The comment body: marker, the commit it is for, the plan; cut to GitHub's limit."""
    head = [
        MARKER,
        f"### GitOps plan for `{commit[:12]}`",
        "",
        # The plan is of GitHub's merge commit: this commit merged into the base branch.
        f"Made for commit `{commit}` merged into its base branch · [workflow run]({run_url}) · "
        f"whole plan as JSON: artifact `{artifact}`",
        "",
    ]
    if plan is None:
        head.append(
            "**No plan was made for this commit**: a step up to the plan failed before it "
            "was written (the workflow run says why). Any plan shown here before was for an "
            "older commit."
        )
        return "\n".join(head) + "\n"
    if outcome not in ("success", ""):
        head += [f"**The plan command did not succeed ({outcome})**: see the errors below.", ""]
    body = "\n".join(head) + "\n" + plan
    if len(body) <= MAX_CHARS:
        return body
    total = len(body)

    def note(kept: int) -> str:
        return (
            f"\n\n*Cut here at {kept:,} of {total:,} characters (GitHub's limit for a comment); "
            f"the whole plan is in the artifact `{artifact}`.*\n"
        )

    room = MAX_CHARS - len(note(total))  # kept <= total: its note is no longer than this one
    cut = body.rfind("\n", 0, room)
    kept = cut if cut > len(MARKER) else room
    return body[:kept] + note(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"))
    parser.add_argument("--pr", type=int, required=True)
    parser.add_argument("--commit", required=True, help="the commit the plan was made for")
    parser.add_argument("--plan", type=Path, required=True, help="the plan's Markdown file")
    parser.add_argument("--outcome", default="", help="the plan step's outcome")
    parser.add_argument("--artifact", default="", help="the artifact holding the plan JSON")
    parser.add_argument("--run-url", default=None)
    args = parser.parse_args(argv)
    if not args.repo:
        parser.error("--repo (or GITHUB_REPOSITORY) is required")
    run_url = args.run_url or "{}/{}/actions/runs/{}".format(
        os.environ.get("GITHUB_SERVER_URL", "https://github.com"),
        args.repo,
        os.environ.get("GITHUB_RUN_ID", ""),
    )
    try:
        # A newer push may have come while this plan was made: its own run comments.
        head = gh(f"repos/{args.repo}/pulls/{args.pr}")["head"]["sha"]
        if head != args.commit:
            print(
                f"pull request #{args.pr} is now at {head}, not {args.commit}: "
                "the plan comment is left to the run for the newer commit"
            )
            return 0
        plan = args.plan.read_text(encoding="utf-8") if args.plan.is_file() else None
        body = render(
            commit=args.commit,
            plan=plan,
            outcome=args.outcome,
            run_url=run_url,
            artifact=args.artifact,
        )
        found = find_comment(args.repo, args.pr)
        if found is None:
            gh(
                f"repos/{args.repo}/issues/{args.pr}/comments",
                method="POST",
                payload={"body": body},
            )
            print(f"plan comment posted on pull request #{args.pr}")
        else:
            gh(f"repos/{args.repo}/issues/comments/{found}", method="PATCH", payload={"body": body})
            print(f"plan comment {found} on pull request #{args.pr} edited")
    except GhError as exc:
        print(f"pr_comment: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
