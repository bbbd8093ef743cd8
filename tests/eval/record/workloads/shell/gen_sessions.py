#!/usr/bin/python3
"""Draw the engineer's interactive sessions: for every day and slot, a file of 10-60
commands (weekend sessions 4-15) that sched.py feeds to a login `bash -i`. Commands come
from a broad pool of everyday commands with the day's file names; now and then a tool
used for the first time; some commands through sudo. Run by init.sh (not recorded).

Usage: gen_sessions.py OUT_DIR T0 DAYS SEED
"""
import os
import random
import sys
import time

out, t0, days, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(f"shell:{seed}")
os.makedirs(out, exist_ok=True)
WORDS = ["timeout", "worker", "ERROR", "redis", "retry", "upstream", "deploy", "cache", "pool", "tls"]
SERVICES = ["redis", "nginx", "postgres", "python3", "bash", "sshd", "cron"]
FIRST_TIME = [  # tools this engineer has not used before on this host
    "jq .pool /srv/app/conf/settings.json", "xxd /srv/app/conf/app.conf | head -n 5", "lsof -nP -iTCP -sTCP:LISTEN",
    "column -t -s, /srv/app/data/regions.csv", "lsblk", "openssl version", "nproc", "getent passwd alex",
    "sqlite3 -version", "file -i /srv/app/data/regions.csv", "tac /srv/app/CHANGELOG | head -n 3", "md5sum /srv/app/conf/app.conf",
    "base64 -w0 /srv/app/conf/app.conf | head -c 60; echo", "od -c /srv/app/VERSION | head -n 2", "env | sort | head -n 20",
    "printenv PATH", "locale", "tr a-z A-Z < /srv/app/VERSION", "expand -t 4 /srv/app/conf/app.conf | head", "nl /srv/app/CHANGELOG | tail -n 3",
]


def pool(d, y, n):
    log, ylog = f"/srv/app/logs/app-{d}.log", f"/srv/app/logs/app-{y}.log.gz"
    w = rng.choice(WORDS)
    svc = rng.choice(SERVICES)
    k = rng.randint(2, 12)
    return [
        "ls", "ls -la", "ls -lh /srv/app/logs", "ls -lt ~/work | head", "cd /srv/app && ls", "cd ~/src/infra && ls -la", "cd",
        "ll /srv/app/releases", "pwd", "cat /srv/app/conf/app.conf", "cat /srv/app/VERSION", "less -F /srv/app/CHANGELOG",
        f"head -n 20 {log}", f"tail -n 50 {log}", f"tail -n 200 {log} | grep -c ERROR", f"grep -n ERROR {log} | tail -n 5",
        f"grep -r {w} /srv/app/conf", f"grep -ri {w} ~/src/infra", f"zcat {ylog} | grep -c WARN", f"zgrep -c ERROR {ylog}",
        "find /srv/app/logs -name '*.gz' -mtime +7", "find ~/src/infra -name '*.yml'", "find /tmp -maxdepth 1 -user alex",
        "ps aux | head -n 15", f"ps aux | grep [{svc[0]}]{svc[1:]}", "ps aux --sort=-%mem | head -n 8", "top -bn1 | head -n 15",
        "df -h", "df -h /srv", "du -sh /srv/app/*", "du -sh ~/work", "free -m", "ss -tlnp", "ss -tan | head", "ip a", "ip route",
        "uptime", "w", "who", "id", "uname -a", "hostname", "date", "date -u",
        "cd ~/src/infra && git status", "cd ~/src/infra && git log --oneline -n 10", "cd ~/src/infra && git diff --stat",
        "cd ~/src/infra && git diff", "cd ~/src/infra && git show --stat HEAD", "cd ~/src/infra && git fetch -q && git status -sb",
        "cd ~/src/infra && git branch -a",
        "python3 -c 'import json; print(json.load(open(\"/srv/app/conf/settings.json\"))[\"pool\"])'",
        f"python3 -c 'print({k} * 1024 * 1024)'", "python3 -m json.tool /srv/app/conf/settings.json",
        "python3 -c 'import platform; print(platform.python_version())'",
        "curl -s localhost:8099/health.json", "curl -sI localhost:8099/ | head -n 1", "curl -s localhost:8099/VERSION",
        f"tar -czf ~/backup/app-conf-{d}.tar.gz -C /srv/app conf", f"tar -tzf ~/backup/app-conf-{d}.tar.gz",
        f"cp {log} ~/work/ && gzip -f ~/work/app-{d}.log", f"cp /srv/app/conf/app.conf ~/work/app.conf.{d}",
        f"cp /srv/app/conf/app.conf ~/work/app.conf.{d} && sed -i 's/^workers = .*/workers = {k}/' ~/work/app.conf.{d}",
        f"diff -u /srv/app/conf/app.conf ~/work/app.conf.{d}", f"sed -n '1,15p' /srv/app/conf/app.conf",
        f"mv ~/work/report.txt ~/work/report-{d}.txt 2>/dev/null; ls ~/work | tail -n 3",
        f"awk '{{print $3}}' {log} | sort | uniq -c | sort -rn | head", f"cut -d' ' -f3 {log} | sort | uniq -c",
        f"wc -l {log}", f"sort -k4 {log} | tail -n 3", f"awk '$3 == \"ERROR\"' {log} > ~/work/report.txt; wc -l ~/work/report.txt",
        "f=$(mktemp); ps aux > $f; wc -l $f; rm -f $f", "t=$(mktemp -d); cp /srv/app/conf/* $t/ && ls $t && rm -rf $t",
        f"f=$(mktemp); grep -h {w} /srv/app/conf/* > $f; cat $f; rm $f",
        "history | tail -n 20", "which python3", "which git curl", "type ll", "file /srv/app/VERSION", "stat /srv/app/conf/app.conf",
        "stat -c '%y %n' /srv/app/logs/* | tail -n 3", "echo $PATH", "env | grep -c ^",
        "sudo ss -tlnp", f"sudo tail -n 20 /srv/app/logs/audit.log", "sudo du -sh /var/log", "sudo ls -la /root", "sudo -l",
        "sudo dmesg | tail -n 10", f"sudo grep -c sudo /srv/app/logs/audit.log", "sudo cat /etc/sudoers.d/ruleless-eval-alex",
    ]


def commit_cmd(d, n):
    return (f"cd ~/src/infra && sed -i 's/^replicas: .*/replicas: {n % 5 + 2}/' hosts/app.yml && "
            f"git commit -qam 'app: replicas {n % 5 + 2} ({d})' && git push -q origin main")


first_time = FIRST_TIME[:]
rng.shuffle(first_time)
commits = 0
for day in range(days):
    ts = t0 + day * 86400
    d = time.strftime("%Y%m%d", time.gmtime(ts))
    y = time.strftime("%Y%m%d", time.gmtime(ts - 86400))
    for slot in ["1", "2", "3", "4", "w"]:
        n = rng.randint(4, 15) if slot == "w" else rng.randint(10, 60)
        cmds = []
        for i in range(n):
            r = rng.random()
            if r < 0.015 and first_time:
                cmds.append(first_time.pop())
            elif r < 0.03:
                commits += 1
                cmds.append(commit_cmd(d, commits))
            else:
                cmds.append(rng.choice(pool(d, y, n)))
        with open(os.path.join(out, f"d{day}-{slot}.sh"), "w") as fh:
            fh.write("\n".join(cmds + ["history -a", "exit", ""]))
