#!/usr/bin/python3
"""Redis protocol for a batch of user profiles and their carts (redis-cli --pipe).

Usage: gen_users.py EPOCH SEED [COUNT]
"""
import random
import sys

ts, seed = int(sys.argv[1]), int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 0
rng = random.Random(f"{ts}:{seed}")
count = count or rng.randint(40, 160)
PLANS = ["free", "free", "free", "pro", "team"]
out = []


def cmd(*args):
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        b = str(a)
        parts.append(f"${len(b.encode())}\r\n{b}\r\n")
    out.append("".join(parts))


for _ in range(count):
    uid = rng.randint(10000, 99999)
    cmd("HSET", f"user:{uid}", "plan", rng.choice(PLANS), "seen", ts, "country", rng.choice(["de", "fr", "us", "br", "jp"]))
    if rng.random() < 0.3:
        cart = f"cart:{uid}"
        for _ in range(rng.randint(1, 4)):
            cmd("HINCRBY", cart, f"sku-{rng.randint(1000, 1999)}", 1)
        cmd("EXPIRE", cart, 7 * 86400)
    cmd("ZADD", "users:seen", ts, uid)
sys.stdout.write("".join(out))
