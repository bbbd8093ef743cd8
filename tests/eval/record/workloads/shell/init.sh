#!/bin/bash
# Provision the bastion/app host: the app's directories, config, dated logs and a tiny
# local HTTP endpoint (python3 -m http.server on 127.0.0.1:8099); the engineer alex with
# a git prompt, an infra repository with a remote, sudo rights; the drawn sessions.
# Runs once before day 0 (not recorded).
set -eu
A=/srv/app
S=/srv/shell
here=$(cd "$(dirname "$0")" && pwd)
for d in $A $S; do
  if [ -e "$d" ] && [ ! -e "$d/.ruleless-eval" ]; then echo "$d exists and is not ours" >&2; exit 1; fi
done
[ -f $S/http.pid ] && kill "$(cat $S/http.pid)" 2>/dev/null || true
rm -rf $A $S
mkdir -p $A/{bin,conf,logs,data,public,releases/2.4.{7,8,9}} $S/sessions
touch $A/.ruleless-eval $S/.ruleless-eval
cp "$here"/bin/* $A/bin/ && chmod 755 $A/bin/*
echo 2.4.9 > $A/VERSION
printf '2.4.9 fix pool sizing\n2.4.8 tls reload\n2.4.7 retry upstream\n' > $A/CHANGELOG
cat > $A/conf/app.conf <<CONF
# app.conf
listen = 127.0.0.1:8099
workers = 4
timeout = 30
upstream = redis://kv-01:6390/0
retry = 3
cache = on
CONF
echo '{"pool": 16, "tls": true, "regions": ["eu", "us"], "deploy": "blue"}' > $A/conf/settings.json
printf 'region,code,zone\neurope,eu,1\namericas,us,2\nasia,ap,3\n' > $A/data/regions.csv
echo '{"status": "ok", "version": "2.4.9"}' > $A/public/health.json
cp $A/VERSION $A/public/VERSION
T0=${EVAL_T0:-1771200000}
EVAL_TS=$(( T0 - 86400 )) $A/bin/rotate-logs.sh
EVAL_TS=$T0 $A/bin/rotate-logs.sh
: > $A/logs/audit.log && chmod 600 $A/logs/audit.log
chown -R root:alex $A/logs && chmod 750 $A/logs && chmod 640 $A/logs/app-*.log*
# the engineer
H=$(getent passwd alex | cut -d: -f6)
rm -rf $H/src $H/work $H/backup $H/.bash_history
mkdir -p $H/src $H/work $H/backup
cp /etc/skel/.bashrc /etc/skel/.profile $H/
cat >> $H/.bashrc <<'RC'
. /usr/lib/git-core/git-sh-prompt
PS1='\u@\h:\w$(__git_ps1 " (%s)")\$ '
HISTSIZE=5000
alias ll='ls -alF'
HISTFILESIZE=20000
RC
git init -q --bare $S/infra.git
git clone -q $S/infra.git $H/src/infra 2>/dev/null
git -C $H/src/infra checkout -q -b main
mkdir -p $H/src/infra/hosts $H/src/infra/roles/app
printf 'hosts: [bastion-01, bastion-02]\nreplicas: 3\ntimeout: 30\n' > $H/src/infra/hosts/app.yml
printf -- '- name: app\n  service: app\n  retry: 3\n' > $H/src/infra/roles/app/main.yml
printf '#!/bin/sh\nrsync -a conf/ app:/srv/app/conf/\n' > $H/src/infra/deploy.sh
git -C $H/src/infra add -A
git -C $H/src/infra -c user.name=alex -c user.email=alex@example.internal commit -q -m "infra: initial"
git -C $H/src/infra push -q origin HEAD:main 2>/dev/null
git -C $H/src/infra branch -q -u origin/main 2>/dev/null || true
git -C $H/src/infra config user.name alex && git -C $H/src/infra config user.email alex@example.internal
chown -R alex:alex $H $S/infra.git
echo 'alex ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ruleless-eval-alex && chmod 440 /etc/sudoers.d/ruleless-eval-alex
/usr/bin/python3 "$here/gen_sessions.py" $S/sessions "$T0" "${EVAL_DAYS:-28}" "${EVAL_SEED:-0}"
chmod 755 $S $S/sessions && chmod 644 $S/sessions/*
setsid /usr/bin/python3 -m http.server 8099 --bind 127.0.0.1 --directory $A/public > /dev/null 2>&1 < /dev/null &
echo $! > $S/http.pid
sleep 0.3
