#!/bin/bash
# Deploy the next release of the static site: fetch the artifact, verify, unpack,
# switch the symlink, test the config, reload nginx, smoke-test, prune old releases.
set -eu
WWW=/srv/www
old=$(cat $WWW/run/version)
IFS=. read -r major minor patch <<< "$old"
if [ "${1:-}" = "--initial" ]; then new=$old
elif (( ${EVAL_RAND:-0} % 9 == 0 )); then new="$major.$((minor + 1)).0"
else new="$major.$minor.$((patch + 1))"; fi
build=$WWW/tmp/build-$new
mkdir -p $build/docs $build/blog $build/static
for page in index about; do printf '<html><body><h1>%s</h1><p>release %s</p></body></html>\n' "$page" "$new" > $build/$page.html; done
printf '<html><body>install notes for %s</body></html>\n' "$new" > $build/docs/install.html
printf 'body{font-family:sans-serif}/* %s */\n' "$new" > $build/static/app.css
printf 'console.log("app %s")\n' "$new" > $build/static/app-$new.js
cp $build/static/app-$new.js $build/static/app.js
printf 'User-agent: *\nDisallow: /api/\n' > $build/robots.txt
tar -czf $WWW/incoming/site-$new.tar.gz -C $build .
rm -rf $build
cd $WWW/incoming
sha256sum site-$new.tar.gz > site-$new.tar.gz.sha256
sha256sum -c --quiet site-$new.tar.gz.sha256
mkdir -p $WWW/releases/$new
tar -xzf site-$new.tar.gz -C $WWW/releases/$new
ln -sfn $WWW/releases/$new $WWW/current.tmp
mv -Tf $WWW/current.tmp $WWW/current
echo "$new" > $WWW/run/version
[ "${1:-}" = "--initial" ] && exit 0
nginx -t -q -c $WWW/conf/nginx.conf
nginx -s reload -c $WWW/conf/nginx.conf
sleep 0.2
curl -fsS http://127.0.0.1:8080/index.html | grep -q "release $new"
echo "$(date -u -d @$EVAL_TS +%FT%TZ) deployed $new (was $old)" >> $WWW/logs/deploy.log
ls -1dt $WWW/releases/* | tail -n +6 | xargs -r rm -rf
ls -1t $WWW/incoming/site-*.tar.gz* | tail -n +9 | xargs -r rm -f
