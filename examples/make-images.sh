#!/usr/bin/env bash
# Create the backing images the example tables name, in DIR/images (default: examples/).
# They are sparse files: they take no space until written.
set -euo pipefail
DIR=${1:-$(cd "$(dirname "$0")" && pwd)}
mkdir -p "$DIR/images"
for spec in a:64M b:32M c:64M d:64M; do
  name=${spec%%:*}; size=${spec#*:}
  [ -e "$DIR/images/$name.img" ] || truncate -s "$size" "$DIR/images/$name.img"
done
echo "images in $DIR/images:"; ls -ls "$DIR/images"
