#!/usr/bin/env python3
"""Writes a large RecBole folder for timing the parser (issue 12):
DIR/NAME.inter with N rows (user, item, rating 1-5, timestamp) and DIR/NAME.item.

    python3 scripts/gen-recbole-inter.py /dev/shm/rb10m 10000000
    bst-train train --data recbole:/dev/shm/rb10m --device cpu --out /dev/shm/rb-run
    # the "data ..." line's seconds are the load (parse, sort, splits)
"""
import os
import random
import sys

out, n = sys.argv[1], int(sys.argv[2])
users, items = 100_000, 50_000
name = os.path.basename(os.path.normpath(out))
os.makedirs(out, exist_ok=True)
random.seed(0)
ri = random.randrange
with open(os.path.join(out, name + ".inter"), "w", buffering=1 << 24) as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    lines = []
    for k in range(n):
        lines.append(f"{ri(users)}\t{ri(items)}\t{ri(1, 6)}\t{880000000 + k}\n")
        if len(lines) >= 100_000:
            f.write("".join(lines))
            lines = []
    f.write("".join(lines))
with open(os.path.join(out, name + ".item"), "w") as f:
    f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
    for i in range(items):
        f.write(f"{i}\tT{i}\t1995\tGenre{i % 19}\n")
