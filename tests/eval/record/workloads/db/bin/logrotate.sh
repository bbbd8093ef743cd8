#!/bin/bash
# Rotate the server log (copytruncate: postgres keeps its file open).
set -eu
cat > /srv/pg/run/logrotate.conf <<CONF
/srv/pg/log/*.log {
  size 1
  rotate 14
  compress
  copytruncate
  missingok
  notifempty
  su postgres postgres
}
CONF
/usr/sbin/logrotate -s /srv/pg/run/logrotate.state /srv/pg/run/logrotate.conf
