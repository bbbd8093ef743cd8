#!/usr/bin/python3
"""Synthetic monitoring: replay a slice of typical visitor traffic against the local site."""
import os
import random
import urllib.error
import urllib.request

rng = random.Random(int(os.environ.get("EVAL_RAND", "1")))
version = open("/srv/www/run/version").read().strip()
pages = ["/", "/index.html", "/about.html", "/docs/", "/docs/install.html", "/blog/", "/api/status",
         "/api/items", "/static/app.css", "/static/app.js", f"/static/app-{version}.js", "/favicon.ico",
         "/robots.txt", "/missing", "/wp-login.php", "/.env"]
weights = [30, 10, 4, 8, 6, 5, 6, 6, 12, 12, 8, 5, 2, 2, 1, 1]
words = ["install", "release", "about", "docs", "pricing", "login", "api", "status", version.replace(".", "")]
cgi = [("/cgi-bin/status", None, 5), ("/cgi-bin/search?q=", "search", 4), ("/cgi-bin/feedback", "post", 1)]
for _ in range(rng.randint(150, 400)):
    data = None
    if rng.random() < 0.05:  # the dynamic part of the site, served through fcgiwrap
        path, kind, _w = rng.choices(cgi, [c[2] for c in cgi])[0]
        if kind == "search":
            path += rng.choice(words)
        elif kind == "post":
            data = f"message {rng.randrange(10**6)}".encode()
    else:
        path = rng.choices(pages, weights)[0]
    try:
        urllib.request.urlopen("http://127.0.0.1:8080" + path, data=data, timeout=5).read()
    except urllib.error.HTTPError:
        pass
