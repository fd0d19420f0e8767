#!/bin/sh
# Builds the `coi` sandbox image on top of a Debian base. Runs as root inside the build
# container; every step is idempotent so a custom script may build on it.
set -eu
export DEBIAN_FRONTEND=noninteractive
CODE_UID=${COI_CODE_UID:-1000}
CODE_USER=${COI_CODE_USER:-code}

echo "==> apt packages"
apt-get update -q
apt-get install -y -q --no-install-recommends \
    ca-certificates curl git tmux sudo less procps iproute2 openssh-client gnupg \
    build-essential python3 python3-venv python3-pip nodejs npm ripgrep jq unzip xz-utils \
    locales vim-tiny

echo "==> user $CODE_USER ($CODE_UID) with passwordless sudo"
if ! getent passwd "$CODE_UID" >/dev/null; then
    useradd --create-home --uid "$CODE_UID" --user-group --shell /bin/bash "$CODE_USER"
fi
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$CODE_USER" >"/etc/sudoers.d/90-coi-$CODE_USER"
chmod 0440 "/etc/sudoers.d/90-coi-$CODE_USER"
mkdir -p /workspace
chown "$CODE_UID:$CODE_UID" /workspace

echo "==> agent CLIs from the npm registry"
npm config set fund false --location=global
npm config set update-notifier false --location=global
npm install -g --no-audit --loglevel=error \
    @anthropic-ai/claude-code opencode-ai @openai/codex

echo "==> checks"
claude --version
opencode --version || echo "opencode installed (no --version output)"
codex --version || echo "codex installed (no --version output)"
tmux -V
git --version
node --version

echo "==> cleanup"
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.npm /tmp/* /var/tmp/*
