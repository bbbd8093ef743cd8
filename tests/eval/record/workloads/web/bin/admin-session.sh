#!/bin/bash
# An operator logs in to look around: a few read-only commands, different each time.
set -u
WWW=/srv/www
cmds=(
  "ss -tlnp"
  "ps -eo pid,user,rss,args --sort=-rss"
  "tail -n 50 $WWW/logs/error.log"
  "nginx -T -c $WWW/conf/nginx.conf"
  "df -h /srv"
  "du -sh $WWW/releases $WWW/archive $WWW/logs"
  "free -m"
  "uptime"
  "curl -sI http://127.0.0.1:8080/"
  "ls -la $WWW/releases"
  "cat $WWW/run/version"
  "grep -c ' 404 ' $WWW/logs/access.log"
  "openssl x509 -noout -dates -in $WWW/tls/cert.pem"
  "lsof -nP -iTCP:8080 -sTCP:LISTEN"
  "tail -n 20 $WWW/logs/deploy.log"
)
n=$(( 2 + EVAL_RAND % 4 ))
for i in $(shuf -i 0-$(( ${#cmds[@]} - 1 )) -n $n --random-source=<(yes $EVAL_RAND)); do
  eval "${cmds[$i]}" > /dev/null 2>&1 || true
done
