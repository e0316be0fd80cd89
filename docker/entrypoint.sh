#!/bin/sh
# The image's entrypoint: run the command (CMD, or compose's `command:`) as the owner of the checkout
# bind-mounted at /app, never as root, so that what the pipeline writes there (data, models, the DVC
# cache, .dvc/tmp) belongs to whoever owns the checkout.
#   /app owned by uid U > 0  the user `primer` takes uid U and gid G, then runs the command.
#   /app owned by root       (many rented GPU hosts) the command runs as `primer` (uid 1000) with
#                            CAP_DAC_OVERRIDE, the one capability that lets it write into root's
#                            files; nothing on the host is chowned, and what it creates is uid 1000's.
# Started as another user already (`docker run --user ...`), it runs the command unchanged.
set -eu

if [ "$#" -eq 0 ]; then
  set -- dvc repro
fi
if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

uid=$(stat -c %u /app)
gid=$(stat -c %g /app)
home=$(getent passwd primer | cut -d: -f6)
command="$*"
set -- env HOME="$home" USER=primer LOGNAME=primer "$@"

if [ "$uid" = 0 ]; then
  echo "entrypoint: /app belongs to root, so '$command' runs as primer (uid $(id -u primer)) with CAP_DAC_OVERRIDE to write there; what it creates belongs to uid $(id -u primer)." >&2
  exec setpriv --reuid=primer --regid=primer --init-groups --no-new-privs \
    --bounding-set=-all,+dac_override --inh-caps=-all,+dac_override --ambient-caps=-all,+dac_override "$@"
fi

if [ "$gid" != "$(id -g primer)" ]; then
  groupmod --non-unique --gid "$gid" primer
fi
if [ "$uid" != "$(id -u primer)" ]; then
  usermod --non-unique --uid "$uid" --gid "$gid" primer  # also gives primer's home to uid U
fi
exec setpriv --reuid=primer --regid=primer --init-groups --no-new-privs --bounding-set=-all --inh-caps=-all "$@"
