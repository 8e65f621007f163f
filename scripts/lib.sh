# Shared by scripts/setup, scripts/run and scripts/test (sourced, not run):
# which account builds, and how to run a command as that account.
#
# Under sudo, everything cargo does runs as the user who typed sudo, with
# that user's toolchain (~/.cargo/bin, which sudo's secure_path drops) and
# into that user's target directory; only what needs root runs as root.
# So `sudo scripts/test` leaves no root-owned file in ~/.cargo or target/.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The account that builds: the user behind sudo, else whoever runs this.
build_user() {
  if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    echo "$SUDO_USER"
  else
    id -un
  fi
}

build_home() {
  getent passwd "$(build_user)" | cut -d: -f6
}

# PATH for the build user: their rustup/cargo bin directory first.
build_path() {
  local home
  home="$(build_home)"
  echo "${CARGO_HOME:-$home/.cargo}/bin:$PATH"
}

# Runs "$@" as the build user, in the repository, with their toolchain.
as_builder() {
  local user
  user="$(build_user)"
  if [ "$user" = "$(id -un)" ]; then
    (cd "$repo_root" && PATH="$(build_path)" "$@")
  else
    local home
    home="$(build_home)"
    (cd "$repo_root" && runuser -u "$user" -- env HOME="$home" USER="$user" LOGNAME="$user" \
      PATH="$(build_path)" ${CARGO_TARGET_DIR:+CARGO_TARGET_DIR="$CARGO_TARGET_DIR"} \
      CI="${CI:-}" "$@")
  fi
}

# Where cargo puts what it builds.
target_dir() {
  echo "${CARGO_TARGET_DIR:-$repo_root/target}"
}
