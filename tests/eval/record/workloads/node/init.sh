#!/bin/bash
# Provision the Node.js build box: the upstream repository with its dated history, the
# runner's mirror, release clone and state, its scripts under /srv/build/bin; git and npm
# settings of the build user (no network: npm runs offline). Runs once before day 0.
set -eu
B=/srv/build
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm (v20) are needed at /usr/bin" >&2; exit 1; }
if [ -e "$B" ] && [ ! -e "$B/.ruleless-eval" ]; then echo "$B exists and is not ours" >&2; exit 1; fi
rm -rf "$B"
mkdir -p "$B"/{bin,upstream,mirrors,work,release,artifacts/app,nightly,state,logs,inventory}
touch "$B/.ruleless-eval"
cp "$here"/bin/* "$B/bin/" && chmod 755 "$B"/bin/*
/usr/bin/python3 "$here/gen_history.py" "$B/upstream" "${EVAL_T0:-1771200000}" "${EVAL_DAYS:-28}" "${EVAL_SEED:-0}"
git clone -q --bare "$B/upstream/app-src" "$B/upstream/app.git"
rm -rf "$B/upstream/app-src"
git clone -q --mirror "$B/upstream/app.git" "$B/mirrors/app.git"
git -C "$B/mirrors/app.git" rev-list -n 1 --before="@${EVAL_T0:-1771200000}" main > "$B/state/app.last"
git clone -q "$B/upstream/app.git" "$B/release/app"
echo 3417 > "$B/state/app.build"
echo 11 > "$B/state/release.seq"
echo -4 > "$B/state/release.day"
home=$(getent passwd build | cut -d: -f6)
cat > "$home/.gitconfig" <<CFG
[user]
	name = build bot
	email = build@build.example.internal
[advice]
	detachedHead = false
CFG
cat > "$home/.npmrc" <<CFG
offline=true
update-notifier=false
fund=false
audit=false
loglevel=warn
CFG
rm -rf "$home/.npm"
chown build:build "$home/.gitconfig" "$home/.npmrc"
chown -R build:build "$B"
