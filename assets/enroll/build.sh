#!/bin/sh
# Rebuilds dist/enroll.js, the enrollment page's script that certgate embeds and serves at
# /.certgate/assets/enroll.js, from src/enroll.js and the libraries pinned in
# package-lock.json. Run it after changing either, and commit dist/enroll.js:
#
#   cd assets/enroll && npm ci && sh build.sh
#
# The banner names the source's SHA-256 and the library versions; tests/assets.rs checks
# both against src/enroll.js and package-lock.json, so a stale bundle fails the tests.
set -eu
cd "$(dirname "$0")"
src_sha=$(sha256sum src/enroll.js | cut -d' ' -f1)
version() { node -p "require('./package-lock.json').packages['node_modules/$1'].version"; }
banner="/* certgate enroll.js: built by assets/enroll/build.sh from src/enroll.js sha256=$src_sha with pkijs@$(version pkijs) asn1js@$(version asn1js) @noble/hashes@$(version @noble/hashes) @peculiar/utils@$(version @peculiar/utils) bytestreamjs@$(version bytestreamjs) esbuild@$(version esbuild). Licences: assets/enroll/LICENSES.md. */"
mkdir -p dist
./node_modules/.bin/esbuild src/enroll.js --bundle --format=iife --target=es2020 \
  --minify --legal-comments=eof --banner:js="$banner" --outfile=dist/enroll.js
