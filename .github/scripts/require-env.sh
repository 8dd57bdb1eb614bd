#!/usr/bin/env bash
# Usage: require-env.sh NAME...
# Fails with one clear message when any named variable (a secret the workflow maps from
# `secrets.*`) is empty, naming the variables and where to set them, never their values.
# FORK=true: the run is for a pull request from a fork, which GitHub gives no secrets at all.
set -euo pipefail

missing=()
for name in "$@"; do
  [[ -n ${!name:-} ]] || missing+=("$name")
done
((${#missing[@]} == 0)) && exit 0

if [[ ${FORK:-false} == true ]]; then
  title="No plan for a pull request from a fork"
  message="GitHub gives workflows of pull requests from forks no secrets (${missing[*]}), so the plan against the deployed fleet cannot be made here. The files were validated. To see the plan, a maintainer pushes this commit to a branch of this repository and opens the pull request from there."
else
  title="Missing secrets: ${missing[*]}"
  message="Set ${missing[*]} under Settings > Secrets and variables > Actions (for Dependabot's pull requests: the Dependabot secrets). docs/gitops.md: The pipeline."
fi
echo "::error title=${title}::${message}"
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then
  printf '### %s\n\n%s\n' "$title" "$message" >> "$GITHUB_STEP_SUMMARY"
fi
exit 1
