#!/bin/sh
# The stand-in seaweedfs image's entrypoint. The official image's /entrypoint.sh adds flags of its own to
# `master`, `volume`, `server`, `filer` and `s3` and hands everything else to weed; docker-compose.yml sets
# its own entrypoint for both of its services, so this one keeps only the hand-over: weed's subcommands
# (and weed's own flags) go to weed, and a command on PATH (sh, wget) runs as given.
set -eu
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec /usr/bin/weed "$@"
