# Sourced by packaging/container/build.sh and tests/container/run.sh: `podman_` is podman with
# a private image store under target/container/ (vfs: works anywhere, no overlay module), runc
# and cgroupfs (crun fails on hybrid cgroup hosts), and a containers.conf without default
# ulimits (those can exceed a sandbox's hard limits). Needs $root (the repository).
# The run root is per repository copy, so that two checkouts never share podman's lock files.
mkdir -p "$root/target/container"
podman_conf=$root/target/container/containers.conf
printf '[containers]\ndefault_ulimits = []\n' > "$podman_conf"
podman_args=(--root "$root/target/container/storage"
  --runroot "/run/snaprtcd-podman-$(printf %s "$root" | md5sum | cut -c1-8)"
  --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)
podman_() { CONTAINERS_CONF=$podman_conf podman "${podman_args[@]}" "$@"; }
