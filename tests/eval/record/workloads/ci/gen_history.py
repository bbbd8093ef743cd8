#!/usr/bin/python3
"""Write the upstream history the CI runner will build: three small projects whose
commits are dated on the simulated calendar (developers push on weekdays, rarely at
weekends), with code growth, new files, version bumps and a CI script that changes over
time. Run by init.sh (provisioning, not recorded).

Usage: gen_history.py UPSTREAM_DIR T0 DAYS SEED
"""

import os
import random
import subprocess
import sys
import textwrap
import time

upstream, t0, days, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
WORDS = ["cache", "index", "merge", "scan", "flush", "codec", "bloom", "split", "trim", "probe",
         "retry", "stats", "queue", "batch", "parse", "quote", "slug", "dates", "money", "table"]


def git(repo, *args, when=None):
    env = dict(os.environ, GIT_AUTHOR_NAME="dev", GIT_AUTHOR_EMAIL="dev@example.internal",
               GIT_COMMITTER_NAME="dev", GIT_COMMITTER_EMAIL="dev@example.internal")
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    subprocess.run(["git", "-C", repo, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def write(repo, path, text, mode=0o644):
    full = os.path.join(repo, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip())
    os.chmod(full, mode)


def bump(version, minor_p=0.05):
    major, minor, patch = map(int, version.split("."))
    if rng.random() < minor_p:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


# ---------------------------------------------------------------- libkv (C, make, gcc)
def libkv_init(repo):
    write(repo, "VERSION", "1.2.0\n")
    write(repo, "include/kv.h", """
        #ifndef KV_H
        #define KV_H
        #include <stddef.h>
        typedef struct kv kv;
        kv *kv_new(size_t buckets);
        void kv_free(kv *t);
        int kv_put(kv *t, const char *k, long v);
        int kv_get(const kv *t, const char *k, long *v);
        unsigned long kv_hash(const char *s);
        const char *kv_version(void);
        #endif
    """)
    write(repo, "src/hash.c", """
        #include "kv.h"
        unsigned long kv_hash(const char *s) { unsigned long h = 5381; while (*s) h = h * 33 + (unsigned char)*s++; return h; }
    """)
    write(repo, "src/kv.c", """
        #include <stdlib.h>
        #include <string.h>
        #include "kv.h"
        struct ent { char *k; long v; struct ent *next; };
        struct kv { size_t n; struct ent **b; };
        kv *kv_new(size_t n) { kv *t = malloc(sizeof *t); t->n = n; t->b = calloc(n, sizeof *t->b); return t; }
        void kv_free(kv *t) { for (size_t i = 0; i < t->n; i++) { struct ent *e = t->b[i]; while (e) { struct ent *x = e->next; free(e->k); free(e); e = x; } } free(t->b); free(t); }
        int kv_put(kv *t, const char *k, long v) { size_t i = kv_hash(k) % t->n; struct ent *e = malloc(sizeof *e); e->k = strdup(k); e->v = v; e->next = t->b[i]; t->b[i] = e; return 0; }
        int kv_get(const kv *t, const char *k, long *v) { for (struct ent *e = t->b[kv_hash(k) % t->n]; e; e = e->next) if (!strcmp(e->k, k)) { *v = e->v; return 0; } return -1; }
    """)
    write(repo, "src/version.c", """
        #include "kv.h"
        const char *kv_version(void) { return KV_VERSION; }
    """)
    write(repo, "tools/kvtool.c", """
        #include <stdio.h>
        #include "kv.h"
        int main(int argc, char **argv) { kv *t = kv_new(64); for (int i = 1; i < argc; i++) kv_put(t, argv[i], i); printf("kvtool %s: %d keys\\n", kv_version(), argc - 1); kv_free(t); return 0; }
    """)
    write(repo, "tests/test_kv.c", """
        #include <assert.h>
        #include <stdio.h>
        #include "kv.h"
        int main(void) { kv *t = kv_new(8); long v; kv_put(t, "a", 1); assert(kv_get(t, "a", &v) == 0 && v == 1); assert(kv_get(t, "b", &v) != 0); kv_free(t); puts("ok"); return 0; }
    """)
    write(repo, "Makefile", """
        VERSION := $(shell cat VERSION)
        CC ?= gcc
        CFLAGS ?= -O2 -g -Wall -Wextra
        SRCS := $(wildcard src/*.c)
        OBJS := $(SRCS:src/%.c=build/%.o)

        all: build/libkv.a build/kvtool

        build:
        \tmkdir -p build

        build/%.o: src/%.c include/kv.h | build
        \t$(CC) $(CFLAGS) -Iinclude -DKV_VERSION='"$(VERSION)"' -c $< -o $@

        build/libkv.a: $(OBJS)
        \tar rcs $@ $^

        build/kvtool: tools/kvtool.c build/libkv.a
        \t$(CC) $(CFLAGS) -Iinclude $< build/libkv.a -o $@

        build/test_kv: tests/test_kv.c build/libkv.a
        \t$(CC) $(CFLAGS) -Iinclude $< build/libkv.a -o $@

        test: build/test_kv build/kvtool
        \t./build/test_kv
        \t./build/kvtool alpha beta gamma

        dist: all
        \tmkdir -p dist
        \ttar -czf dist/libkv-$(VERSION).tar.gz include build/libkv.a build/kvtool

        clean:
        \trm -rf build dist

        .PHONY: all test dist clean
    """.replace("\\t", "\t"))
    write(repo, "ci/build.sh", """
        #!/bin/sh
        set -eu
        make -j2
        make test
        make dist
    """, 0o755)


def libkv_change(repo, day, version, modules):
    if rng.random() < 0.18:
        name = rng.choice(WORDS) + (f"_v{day + 4}" if rng.random() < 0.3 else "")
        if name not in modules:
            modules.append(name)
            write(repo, f"src/{name}.c", f"""
                #include "kv.h"
                long kv_{name}(const char *s) {{ return (long)(kv_hash(s) % {rng.randint(7, 997)}); }}
            """)
    target = rng.choice(["src/kv.c", "src/hash.c"] + [f"src/{m}.c" for m in modules])
    with open(os.path.join(repo, target), "a") as fh:
        fn = f"{rng.choice(WORDS)}_{rng.randrange(10**6)}"
        fh.write(f"long kv_internal_{fn}(long x) {{ return x * {rng.randint(2, 99)} + {rng.randint(0, 9)}; }}\n")
    if day == 11:  # the team adds a warnings-as-errors lint stage to the pipeline
        write(repo, "ci/build.sh", """
            #!/bin/sh
            set -eu
            for f in src/*.c; do gcc -fsyntax-only -Wall -Wextra -Werror -Iinclude -DKV_VERSION='"lint"' "$f"; done
            make -j2
            make test
            make dist
        """, 0o755)
    if rng.random() < 0.25:
        version = bump(version)
        write(repo, "VERSION", version + "\n")
    return version


# ---------------------------------------------------------------- pyutil (Python, pytest, wheel)
def pyutil_init(repo):
    write(repo, "pyproject.toml", """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "pyutil"
        version = "0.7.0"
        requires-python = ">=3.9"

        [tool.pytest.ini_options]
        pythonpath = ["src"]
    """)
    write(repo, "src/pyutil/__init__.py", '"""Small helpers shared by our services."""\n')
    write(repo, "src/pyutil/strings.py", """
        def slug(text):
            return "-".join(text.lower().split())
    """)
    write(repo, "tests/test_strings.py", """
        from pyutil.strings import slug

        def test_slug():
            assert slug("Hello World") == "hello-world"
    """)
    write(repo, "ci/build.sh", """
        #!/bin/sh
        set -eu
        python3 -m pytest -q -p no:cacheprovider tests
        if [ "${CI_RELEASE:-0}" = 1 ]; then
          python3 -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w dist .
        fi
    """, 0o755)
    write(repo, "setup.cfg", "[options]\npackage_dir =\n    = src\npackages = find:\n\n[options.packages.find]\nwhere = src\n")


def pyutil_change(repo, day, version, modules):
    if rng.random() < 0.2:
        name = rng.choice(WORDS)
        if name not in modules:
            modules.append(name)
            k = rng.randint(2, 9)
            write(repo, f"src/pyutil/{name}.py", f"""
                def {name}_score(values):
                    return sum(values) * {k}
            """)
            write(repo, f"tests/test_{name}.py", f"""
                from pyutil.{name} import {name}_score

                def test_{name}_score():
                    assert {name}_score([1, 2]) == {3 * k}
            """)
    target = rng.choice(["strings"] + modules)
    with open(os.path.join(repo, f"src/pyutil/{target}.py"), "a") as fh:
        fn = f"{rng.choice(WORDS)}_{rng.randrange(10**5)}"
        fh.write(f"\n\ndef {fn}(x):\n    return x + {rng.randint(1, 50)}\n")
    if day == 15:  # bytecode compile check added to the pipeline
        write(repo, "ci/build.sh", """
            #!/bin/sh
            set -eu
            python3 -m compileall -q src
            python3 -m pytest -q -p no:cacheprovider tests
            if [ "${CI_RELEASE:-0}" = 1 ]; then
              python3 -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w dist .
            fi
        """, 0o755)
    if rng.random() < 0.22:
        version = bump(version, 0.1)
        path = os.path.join(repo, "pyproject.toml")
        text = open(path).read()
        old = [l for l in text.splitlines() if l.startswith("version = ")][0]
        open(path, "w").write(text.replace(old, f'version = "{version}"'))
    return version


# ---------------------------------------------------------------- ops-config (shell, json)
def opsconf_init(repo):
    write(repo, "VERSION", "2026.02.0\n")
    write(repo, "scripts/deploy.sh", "#!/bin/sh\nset -eu\necho deploying \"$1\"\n", 0o755)
    write(repo, "config/app.json", '{"replicas": 2, "region": "eu"}\n')
    write(repo, "ci/build.sh", """
        #!/bin/sh
        set -eu
        for f in scripts/*.sh; do sh -n "$f"; done
        for f in config/*.json; do jq empty "$f"; done
        mkdir -p dist
        tar -czf dist/ops-config-$(cat VERSION).tar.gz scripts config
    """, 0o755)


def opsconf_change(repo, day, version, modules):
    if rng.random() < 0.3:
        name = rng.choice(["app", "worker", "cron", "edge", "billing", "search"])
        write(repo, f"config/{name}.json", f'{{"replicas": {rng.randint(1, 6)}, "region": "{rng.choice(["eu", "us"])}"}}\n')
    else:
        name = rng.choice(["deploy", "rollback", "drain", "warmup"])
        write(repo, f"scripts/{name}.sh", f"#!/bin/sh\nset -eu\necho {name} \"$1\" {rng.randrange(1000)}\n", 0o755)
    if rng.random() < 0.3:
        tm = time.gmtime(t0 + day * 86400)
        version = f"{tm.tm_year}.{tm.tm_mon:02d}.{int(version.split('.')[2]) + 1}"
        write(repo, "VERSION", version + "\n")
    return version


PROJECTS = {
    "libkv": (libkv_init, libkv_change, "1.2.0", (2, 5)),
    "pyutil": (pyutil_init, pyutil_change, "0.7.0", (1, 4)),
    "ops-config": (opsconf_init, opsconf_change, "2026.02.0", (0, 2)),
}

for name, (init, change, version, (lo, hi)) in PROJECTS.items():
    work = os.path.join(upstream, name + ".work")
    os.makedirs(work)
    git(work, "init", "-q", "-b", "main")
    init(work)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial import", when=t0 - 7 * 86400)
    modules = []
    for day in range(-3, days + 2):
        weekday = time.gmtime(t0 + day * 86400).tm_wday < 5
        n = rng.randint(lo, hi) if weekday else (1 if rng.random() < 0.3 else 0)
        times = sorted(rng.randint(8 * 3600, 19 * 3600) for _ in range(n))
        for at in times:
            version = change(work, day, version, modules)
            git(work, "add", "-A")
            git(work, "commit", "-q", "--allow-empty", "-m", f"{rng.choice(WORDS)}: {rng.choice(['fix', 'add', 'tune', 'refactor'])} {rng.choice(WORDS)}",
                when=t0 + day * 86400 + at)
    subprocess.run(["git", "clone", "-q", "--bare", work, os.path.join(upstream, name + ".git")], check=True)
    subprocess.run(["rm", "-rf", work], check=True)
