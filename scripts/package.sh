#!/usr/bin/env bash
# Usage: scripts/package.sh [deb] [rpm]        (default: both)
# Builds the release binaries with cargo, then packages them with Tauri's bundler
# (@tauri-apps/cli from npm, pinned in packaging/package-lock.json):
#   /usr/bin/tokenwarden             the tray app, CLI and daemon (the desktop entry's Exec)
#   /usr/bin/tokenwarden-window      the window, started by the tray app
#   /usr/lib/systemd/user/tokenwarden.service   `systemctl --user enable --now tokenwarden`
#   the desktop entry and icons, bash/zsh/fish completions and the man page (the last
#   two generated here by the built binary).
# No AppImage: its bundler downloads linuxdeploy from GitHub at build time.
# Prints each package's path and size; the packages land in $PACKAGE_OUT
# (default: target/release/bundle/{deb,rpm}).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

# ---- Paths: everything the layout decides, in one place. ----
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The release binaries and how cargo builds them (whichever workspace package holds them).
release_dir=$CARGO_TARGET_DIR/release
main_bin=tokenwarden
window_bin=tokenwarden-window
cargo_build=(cargo build --release --locked --workspace --bin "$main_bin" --bin "$window_bin")
# The directory holding tauri.conf.json (and the Cargo.toml of the main binary's package).
tauri_dir=$root
# The pinned bundler.
bundler_dir=$root/packaging
systemd_unit=$root/packaging/tokenwarden.service
# Generated files (completions, man page) go here before the bundler copies them.
stage=$CARGO_TARGET_DIR/package-stage
# Where the bundler writes the packages.
bundle_dir=$release_dir/bundle
# ---------------------------------------------------------------

bundles=("$@")
((${#bundles[@]})) || bundles=(deb rpm)
for b in "${bundles[@]}"; do
  [[ $b == deb || $b == rpm ]] || { echo "package.sh: unknown bundle '$b' (deb, rpm)" >&2; exit 2; }
done

for tool in cargo npm node gzip python3; do
  command -v "$tool" >/dev/null || { echo "package.sh: '$tool' not found" >&2; exit 1; }
done

start=$SECONDS
echo "== cargo: release binaries $main_bin, $window_bin"
"${cargo_build[@]}"
build_secs=$((SECONDS - start))

echo "== npm: Tauri's bundler (pinned)"
if ! [[ -f $bundler_dir/node_modules/.package-lock.json ]] ||
   ! cmp -s "$bundler_dir/package-lock.json" "$bundler_dir/.installed-lock"; then
  (cd "$bundler_dir" && npm ci --no-audit --no-fund --ignore-scripts &&
    cp package-lock.json .installed-lock)
fi
tauri=("node" "$bundler_dir/node_modules/@tauri-apps/cli/tauri.js")

echo "== generating completions and the man page with the built binary"
rm -rf "$stage"
mkdir -p "$stage"
"$release_dir/$main_bin" completions bash >"$stage/tokenwarden.bash"
"$release_dir/$main_bin" completions zsh >"$stage/_tokenwarden"
"$release_dir/$main_bin" completions fish >"$stage/tokenwarden.fish"
"$release_dir/$main_bin" man | gzip -9n >"$stage/tokenwarden.1.gz"

# Where each file goes in the package (the same for .deb and .rpm).
declare -A files=(
  [/usr/bin/$window_bin]=$release_dir/$window_bin
  [/usr/lib/systemd/user/tokenwarden.service]=$systemd_unit
  [/usr/share/bash-completion/completions/tokenwarden]=$stage/tokenwarden.bash
  [/usr/share/zsh/vendor-completions/_tokenwarden]=$stage/_tokenwarden
  [/usr/share/fish/vendor_completions.d/tokenwarden.fish]=$stage/tokenwarden.fish
  [/usr/share/man/man1/tokenwarden.1.gz]=$stage/tokenwarden.1.gz
)
files_json=$(for k in "${!files[@]}"; do printf '%s\0%s\0' "$k" "${files[$k]}"; done |
  python3 -c 'import json,sys; a=sys.stdin.buffer.read().decode().split("\0")[:-1]; print(json.dumps(dict(zip(a[::2],a[1::2]))))')
# The main binary by name (else the bundler takes the name of the package holding
# tauri.conf.json). The tray is AppIndicator's (loaded at run time, so the bundler
# cannot see it); the bundler adds the web view's and GTK's libraries itself.
config=$(python3 - "$files_json" "$main_bin" <<'EOF'
import json, sys
files = json.loads(sys.argv[1])
# zsh looks in vendor-completions on Debian, in site-functions on Fedora.
zsh = "/usr/share/zsh/vendor-completions/_tokenwarden"
rpm_files = {("/usr/share/zsh/site-functions/_tokenwarden" if k == zsh else k): v
             for k, v in files.items()}
print(json.dumps({"mainBinaryName": sys.argv[2], "bundle": {"linux": {
    "deb": {"files": files, "depends": ["libayatana-appindicator3-1"]},
    "rpm": {"files": rpm_files, "depends": ["libayatana-appindicator-gtk3"]},
}}}))
EOF
)

echo "== bundling: ${bundles[*]}"
bundle_start=$SECONDS
# The bundler may rewrite Cargo.toml's tauri lines to its liking: put the file back.
cp "$tauri_dir/Cargo.toml" "$stage/Cargo.toml.before-bundle"
rc=0
(cd "$tauri_dir" && CI=true "${tauri[@]}" bundle --bundles "$(IFS=,; echo "${bundles[*]}")" \
  --config "$config") || rc=$?
cmp -s "$stage/Cargo.toml.before-bundle" "$tauri_dir/Cargo.toml" ||
  cp "$stage/Cargo.toml.before-bundle" "$tauri_dir/Cargo.toml"
((rc == 0)) || { echo "package.sh: the bundler failed ($rc)" >&2; exit "$rc"; }
bundle_secs=$((SECONDS - bundle_start))

# What every package must hold.
must_hold=("/usr/bin/$main_bin" "${!files[@]}" /usr/share/applications/Tokenwarden.desktop
  /usr/share/icons/hicolor/128x128/apps/tokenwarden.png)
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
check() { # check PACKAGE LISTING
  local missing=0 f
  for f in "${must_hold[@]}"; do
    # dpkg-deb lists `usr/...` or `./usr/...`, rpm `/usr/...`.
    if ! grep -Eq "(^|[ ./])${f#/}\$" <<<"$2"; then
      echo "package.sh: $1 lacks $f" >&2
      missing=1
    fi
  done
  return "$missing"
}
for b in "${bundles[@]}"; do
  pkg=$(ls -t "$bundle_dir/$b"/*."$b" | head -n1)
  case $b in
    deb)
      check "$pkg" "$(dpkg-deb -c "$pkg")"
      exec_line=$(dpkg-deb --fsys-tarfile "$pkg" |
        tar -xOf - --wildcards '*usr/share/applications/Tokenwarden.desktop' | grep '^Exec=')
      [[ $exec_line == "Exec=$main_bin" ]] ||
        { echo "package.sh: the desktop entry says '$exec_line', not Exec=$main_bin" >&2; exit 1; }
      ;;
    rpm)
      if command -v rpm >/dev/null; then
        check "$pkg" "$(rpm -qlp "$pkg" 2>/dev/null |
          sed 's,^/usr/share/zsh/site-functions/,/usr/share/zsh/vendor-completions/,')"
      else
        echo "package.sh: rpm not installed, the .rpm's file list is not checked"
      fi
      ;;
  esac
  if [[ -n ${PACKAGE_OUT:-} ]]; then
    mkdir -p "$PACKAGE_OUT"
    cp "$pkg" "$PACKAGE_OUT/"
    pkg=$PACKAGE_OUT/$(basename "$pkg")
  fi
  echo "package.sh: $pkg ($(mb "$pkg"))"
done
echo "package.sh: cargo ${build_secs}s, bundler ${bundle_secs}s, total $((SECONDS - start))s"
