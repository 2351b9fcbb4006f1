#!/usr/bin/env bash
# Copy uPlot's built files and licence from the npm package into the dashboard's static folder.
# The dashboard serves them itself, so it works without network access; run this to change
# the version, and update UPLOT_VERSION and UPLOT_INTEGRITY (from `npm view uplot@V dist.integrity`).
set -euo pipefail

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="

root="$(cd "$(dirname "$0")/.." && pwd)"
target="$root/sparkiot/dashboard/static/vendor/uplot"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null
archive="uplot-$UPLOT_VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$archive" | base64 -w0)"
if [ "$actual" != "$UPLOT_INTEGRITY" ]; then
    echo "error: $archive has integrity $actual, expected $UPLOT_INTEGRITY" >&2
    exit 1
fi
tar xzf "$archive"
mkdir -p "$target"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE "$target/"
echo "uPlot $UPLOT_VERSION copied to $target"
