#!/usr/bin/python3
"""Write the upstream history the build box will build: a small Node.js project (no
npm dependencies; two vendored helpers) whose commits are dated on the simulated
calendar (developers push on weekdays, rarely at weekends): functions added to
modules, new modules with their tests, and a size check that joins the project's
scripts on day 12. Run by init.sh (provisioning, not recorded).

Usage: gen_history.py UPSTREAM_DIR T0 DAYS SEED
"""

import json
import os
import random
import subprocess
import sys
import textwrap

upstream, t0, days, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
repo = os.path.join(upstream, "app-src")
WORDS = ["price", "slug", "cart", "money", "date", "retry", "token", "query", "route", "cache",
         "queue", "locale", "mailer", "report", "audit", "quota", "search", "upload", "invoice", "tax"]


def git(*args, when=None):
    env = dict(os.environ, GIT_AUTHOR_NAME="dev", GIT_AUTHOR_EMAIL="dev@example.internal",
               GIT_COMMITTER_NAME="dev", GIT_COMMITTER_EMAIL="dev@example.internal")
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    subprocess.run(["git", "-C", repo, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def write(path, text):
    full = os.path.join(repo, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip())


def package_json(size_check):
    scripts = {"build": "node build.js", "test": "node --test test/", "lint": "node scripts/lint.js"}
    if size_check:
        scripts["size"] = "node scripts/check-size.js dist/app.js 65536"
    # "version" stays far from "scripts": releases bump it on their own branch.
    return json.dumps({"name": "app", "version": "2.4.10", "description": "storefront helpers",
                       "main": "dist/app.js", "license": "MIT", "author": "shop team",
                       "files": ["dist/", "README.md"], "engines": {"node": ">=18"},
                       "repository": {"type": "git", "url": "git+ssh://git.example.internal/shop/app.git"},
                       "scripts": scripts}, indent=2) + "\n"


modules = []


def add_module(name):
    modules.append(name)
    write(f"src/{name}.js", f"""
        'use strict';
        // {name} helpers
        function {name}Id(x) {{ return String(x).trim().toLowerCase(); }}
        module.exports = {{ {name}Id }};
    """)
    write(f"test/{name}.test.js", f"""
        'use strict';
        const test = require('node:test');
        const assert = require('node:assert');
        const m = require('../src/{name}.js');
        test('{name}Id trims and lowercases', () => {{ assert.strictEqual(m.{name}Id(' A '), 'a'); }});
    """)


def grow(name, n):
    path = os.path.join(repo, "src", f"{name}.js")
    with open(path) as fh:
        text = fh.read()
    fn = f"{name}Step{n}"
    text = text.replace("module.exports = {", f"function {fn}(v) {{ return Array.isArray(v) ? v.length + {n} : {n}; }}\nmodule.exports = {{ {fn},", 1)
    with open(path, "w") as fh:
        fh.write(text)
    with open(os.path.join(repo, "test", f"{name}.test.js"), "a") as fh:
        fh.write(f"test('{fn}', () => {{ assert.strictEqual(m.{fn}([1, 2]), {n + 2}); }});\n")


os.makedirs(repo)
subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
write("package.json", package_json(False))
write("README.md", "# app\n\nStorefront helpers, bundled into dist/app.js.\n")
write(".gitignore", "dist/\nnode_modules/\n*.tgz\n")
write("build.js", """
    'use strict';
    // Bundle src/*.js into dist/app.js and write dist/manifest.json (sizes, sha256).
    const fs = require('node:fs');
    const path = require('node:path');
    const crypto = require('node:crypto');
    const pkg = require('./package.json');
    const files = fs.readdirSync('src').filter((f) => f.endsWith('.js')).sort();
    let out = `/* ${pkg.name} ${pkg.version} */\\n'use strict';\\nconst modules = {};\\n`;
    for (const f of files) {
      const body = fs.readFileSync(path.join('src', f), 'utf8');
      out += `modules[${JSON.stringify(f)}] = (function () { const module = { exports: {} };\\n${body}\\nreturn module.exports; })();\\n`;
    }
    out += 'module.exports = Object.assign({}, ...Object.values(modules));\\n';
    fs.mkdirSync('dist', { recursive: true });
    fs.writeFileSync('dist/app.js', out);
    const sha = crypto.createHash('sha256').update(out).digest('hex');
    fs.writeFileSync('dist/manifest.json', JSON.stringify({ version: pkg.version, files, bytes: out.length, sha256: sha }, null, 2));
    console.log(`built dist/app.js (${files.length} modules, ${out.length} bytes)`);
""")
write("scripts/lint.js", """
    'use strict';
    // Tiny lint: no trailing whitespace, no tabs, 'use strict' first in every module.
    const fs = require('node:fs');
    let bad = 0;
    for (const dir of ['src', 'test']) {
      for (const f of fs.readdirSync(dir)) {
        const text = fs.readFileSync(`${dir}/${f}`, 'utf8');
        if (/[ \\t]+$/m.test(text) || /\\t/.test(text)) { console.error(`${dir}/${f}: whitespace`); bad++; }
        if (!text.startsWith("'use strict';")) { console.error(`${dir}/${f}: no 'use strict'`); bad++; }
      }
    }
    process.exit(bad ? 1 : 0);
""")
write("scripts/licenses.js", """
    'use strict';
    // Licence inventory of the vendored helpers (vendor/*/package.json).
    const fs = require('node:fs');
    for (const d of fs.readdirSync('vendor').sort()) {
      const p = JSON.parse(fs.readFileSync(`vendor/${d}/package.json`, 'utf8'));
      console.log(`${p.name}@${p.version} ${p.license}`);
    }
""")
for name, lic in (("tiny-semver", "ISC"), ("kebab", "MIT")):
    write(f"vendor/{name}/package.json", json.dumps({"name": name, "version": "1.0.3", "license": lic}) + "\n")
    write(f"vendor/{name}/index.js", "'use strict';\nmodule.exports = (s) => String(s);\n")
    write(f"vendor/{name}/LICENSE", f"{lic} licence text\n")
for name in WORDS[:4]:
    add_module(name)
git("add", "-A")
git("commit", "-q", "-m", "app: initial import", when=t0 - 10 * 86400)
git("tag", "-a", "v2.4.10", "-m", "release 2.4.10", when=t0 - 6 * 86400)

next_word = 4
step = 0
for day in range(-5, days + 1):
    dow = (day % 7)  # 0 = Monday (t0 is a Monday)
    if dow < 5:
        n = rng.randint(3, 8)
    else:
        n = 1 if rng.random() < 0.25 else 0
    times = sorted(rng.randint(9 * 3600, 18 * 3600 + 1800) for _ in range(n))
    for at in times:
        when = t0 + day * 86400 + at
        r = rng.random()
        if day == 12 and not os.path.exists(os.path.join(repo, "scripts/check-size.js")):
            write("scripts/check-size.js", """
                'use strict';
                // Fail the build when the bundle outgrows its budget.
                const fs = require('node:fs');
                const [file, budget] = process.argv.slice(2);
                const size = fs.statSync(file).size;
                console.log(`${file}: ${size} bytes (budget ${budget})`);
                process.exit(size > Number(budget) ? 1 : 0);
            """)
            write("package.json", package_json(True))
            msg = "build: bundle size budget"
        elif r < 0.15 and next_word < len(WORDS):
            add_module(WORDS[next_word])
            msg = f"{WORDS[next_word]}: new module"
            next_word += 1
        elif r < 0.22:
            with open(os.path.join(repo, "README.md"), "a") as fh:
                fh.write(f"\n- {rng.choice(modules)}: documented ({step})\n")
            msg = "docs: readme"
        else:
            step += 1
            name = rng.choice(modules)
            grow(name, step)
            msg = f"{name}: {rng.choice(['handle arrays', 'edge case', 'faster path', 'fix rounding', 'refactor'])}"
        git("add", "-A")
        git("commit", "-q", "-m", msg, when=when)
