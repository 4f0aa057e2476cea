#!/usr/bin/env bash
# The main job end to end: build Orca, make a busybox OCI bundle from Debian's busybox-static,
# and run a container in it with orca-runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --bins
RT="$PWD/target/release/orca-runtime"
work=$(mktemp -d /tmp/orca-demo.XXXXXX)
trap '"$RT" --root "$work/state" delete -f demo >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/etc"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$work/bundle/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/bundle/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/bundle/rootfs/etc/group"
cd "$work/bundle"
"$RT" spec
# No terminal (this may run without one) and a friendly command.
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"sh", "-c", "echo hello from an orca container: $(hostname), pid $$; ls \/"/' config.json
"$RT" --root "$work/state" run demo
