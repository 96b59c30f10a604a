#!/usr/bin/env bash
# Developer step (never run at install): fetches the web UI's pinned
# third-party browser libraries with `npm pack`, checks each tarball against
# its pinned npm `dist.integrity`, and unpacks the files the UI serves into
# node/src/ui/vendor/ (committed to the repository). Run it again after
# changing a pin; it replaces the vendored trees.
#
#   @xterm/xterm      6.0.0   MIT      serial console terminal
#   @xterm/addon-fit  0.11.0  MIT      sizes the terminal to its box
#   @novnc/novnc      1.7.0   MPL-2.0  graphical console (pako inside: MIT)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/node/src/ui/vendor"

# name version integrity license
pins=(
  "@xterm/xterm 6.0.0 sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg== MIT"
  "@xterm/addon-fit 0.11.0 sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g== MIT"
  "@novnc/novnc 1.7.0 sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA== MPL-2.0"
)

for tool in npm tar openssl; do
  command -v "$tool" >/dev/null || { echo "vendor-ui: $tool is needed" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# fetch NAME VERSION INTEGRITY: leaves the unpacked package in $work/NAME-VERSION/package.
fetch() {
  local name="$1" version="$2" integrity="$3"
  local dir="$work/${name//\//_}-$version"
  mkdir -p "$dir"
  local tgz
  tgz="$(cd "$dir" && npm pack --silent "$name@$version" | tail -n1)"
  local algo="${integrity%%-*}" want="${integrity#*-}" got
  got="$(openssl dgst "-$algo" -binary "$dir/$tgz" | openssl base64 -A)"
  if [ "$got" != "$want" ]; then
    echo "vendor-ui: $name@$version: integrity mismatch: got $algo-$got, pinned $integrity" >&2
    exit 1
  fi
  tar -xzf "$dir/$tgz" -C "$dir"
  echo "$dir/package"
}

# Removes a trailing `//# sourceMappingURL=` line (the .map files are not vendored).
strip_map() {
  local f="$1"
  if grep -q '^//# sourceMappingURL=' "$f"; then
    sed -i '/^\/\/# sourceMappingURL=/d' "$f"
  fi
}

rm -rf "$vendor"
mkdir -p "$vendor"
: > "$work/VERSIONS"

for pin in "${pins[@]}"; do
  read -r name version integrity license <<<"$pin"
  pkg="$(fetch "$name" "$version" "$integrity")"
  case "$name" in
    @xterm/xterm)
      out="$vendor/xterm-$version"
      mkdir -p "$out"
      cp "$pkg/lib/xterm.mjs" "$pkg/css/xterm.css" "$pkg/LICENSE" "$out/"
      strip_map "$out/xterm.mjs"
      ;;
    @xterm/addon-fit)
      out="$vendor/addon-fit-$version"
      mkdir -p "$out"
      cp "$pkg/lib/addon-fit.mjs" "$pkg/LICENSE" "$out/"
      strip_map "$out/addon-fit.mjs"
      ;;
    @novnc/novnc)
      out="$vendor/novnc-$version"
      mkdir -p "$out/docs"
      # Keep the relative layout (core/rfb.js imports ../vendor/pako/...): .js files only.
      (cd "$pkg" && find core vendor/pako -type f -name '*.js' -print0 |
        while IFS= read -r -d '' f; do
          mkdir -p "$out/$(dirname "$f")"
          cp "$f" "$out/$f"
        done)
      cp "$pkg/LICENSE.txt" "$out/"
      cp "$pkg"/docs/LICENSE.* "$out/docs/"
      # pako keeps its own license next to its code, when the package ships it.
      [ -f "$pkg/vendor/pako/LICENSE" ] && cp "$pkg/vendor/pako/LICENSE" "$out/vendor/pako/"
      find "$out" -name '*.js' -print0 | while IFS= read -r -d '' f; do strip_map "$f"; done
      ;;
  esac
  printf '%s %s %s %s\n' "$name" "$version" "$integrity" "$license" >> "$work/VERSIONS"
  echo "vendor-ui: $name@$version -> ${out#"$root"/}"
done

cp "$work/VERSIONS" "$vendor/VERSIONS"
echo "vendor-ui: wrote ${vendor#"$root"/}/VERSIONS"
