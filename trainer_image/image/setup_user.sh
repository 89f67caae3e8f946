#!/bin/sh
# Image step shared by the CPU and GPU trainer Dockerfiles: the non-root user 1000 with home /home/kestrel
# (the operator's contract, docs/operator.md), its unprivileged sshd config and the launcher's ssh config.
# Run as root from the directory holding sshd_config and ssh_config.
set -eu
uid=${1:-1000}
useradd --uid "$uid" --user-group --create-home --home-dir /home/kestrel --shell /bin/bash kestrel
install -o "$uid" -g "$uid" -m 0644 sshd_config /home/kestrel/.sshd_config
install -m 0644 ssh_config /etc/ssh/ssh_config.d/kestrel.conf
# The MPI Operator mounts its Secret over this; without it, ssh still finds a directory it can ignore.
install -d -o "$uid" -g "$uid" -m 0700 /home/kestrel/.ssh
# A results/data folder to mount over, owned by the user (a hostPath or podman bind mount keeps its owner).
install -d -o "$uid" -g "$uid" -m 0755 /results
