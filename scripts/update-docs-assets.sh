#!/usr/bin/env bash
# Refresh the Swagger UI and ReDoc files that /docs and /redoc serve, from the npm
# registry (npm checks each tarball against the registry's sha512). Only the files the
# pages load are kept, byte for byte as published, with their licences.
# Usage: scripts/update-docs-assets.sh [swagger-ui-version] [redoc-version]
set -euo pipefail
swagger_ui="${1:-5.35.0}"
redoc="${2:-2.5.4}"  # FastAPI's ReDoc page is written for ReDoc 2
dest="$(cd "$(dirname "$0")/.." && pwd)/auth_service/static"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "swagger-ui-dist@$swagger_ui" "redoc@$redoc" >/dev/null
mkdir swagger redoc
tar xzf "swagger-ui-dist-$swagger_ui.tgz" -C swagger
tar xzf "redoc-$redoc.tgz" -C redoc

rm -rf "$dest/swagger-ui" "$dest/redoc"
mkdir -p "$dest/swagger-ui" "$dest/redoc"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
    cp "swagger/package/$f" "$dest/swagger-ui/$f"
done
cp redoc/package/bundles/redoc.standalone.js redoc/package/bundles/redoc.standalone.js.LICENSE.txt "$dest/redoc/"
cp redoc/package/LICENSE "$dest/redoc/LICENSE"
printf 'swagger-ui-dist %s (Apache-2.0)\nredoc %s (MIT)\n' "$swagger_ui" "$redoc" >"$dest/VERSIONS"
echo "vendored swagger-ui-dist $swagger_ui and redoc $redoc into $dest"
