#!/usr/bin/env python3
"""Caps a minimized fuzz corpus at N files for the repository.

    python3 fuzz/cap_corpus.py TARGET N OUT_DIR CORPUS_DIR...

`cargo fuzz cmin` keeps every input that adds a coverage feature, which is
still hundreds of files after a 10-minute run. This keeps the hand-written
seeds (files whose names are not a 40-hex SHA-1, as libFuzzer names its
finds), then adds, greedily, the input that covers the most edges not yet
covered, until N files. Each input's edges come from running the target
binary built by `cargo fuzz build` in libFuzzer's merge mode on that input
alone (`-use_counters=0`: edges, not hit-count buckets). OUT_DIR is
replaced. Standard library only. See docs/reliability.md, "Fuzzing".
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
SHA1 = re.compile(r"[0-9a-f]{40}")


def edges(binary, path):
    """The edges (libFuzzer features without counters) one input covers."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        os.mkdir(inp)
        os.mkdir(out)
        shutil.copy(path, inp)
        ctl = os.path.join(tmp, "ctl")
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={ctl}", out, inp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
        for line in open(ctl):
            if line.startswith("FT "):
                return set(map(int, line.split()[2:]))
    return set()


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    target, cap, out_dir, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    binary = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", target)
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} is missing: run `cargo +nightly fuzz build {target}` first")

    inputs = {}  # content -> (name, path): identical inputs count once
    for d in dirs:
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            data = open(path, "rb").read()
            if data not in inputs or not SHA1.fullmatch(name):
                inputs[data] = (name, path)
    covered = {name: edges(binary, path) for name, path in inputs.values()}
    contents = {name: data for data, (name, _) in inputs.items()}  # OUT_DIR may be an input
    every = set().union(*covered.values())

    chosen = [name for name in covered if not SHA1.fullmatch(name)]
    got = set().union(*(covered[n] for n in chosen))
    seeds_alone = len(got)
    while len(chosen) < cap:
        rest = [n for n in covered if n not in chosen]
        if not rest:
            break
        best = max(rest, key=lambda n: (len(covered[n] - got), -len(contents[n]), n))
        if not covered[best] - got:
            break
        chosen.append(best)
        got |= covered[best]

    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    for name in chosen:
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(contents[name])
    size = sum(len(contents[n]) for n in chosen)
    largest = max(len(contents[n]) for n in chosen)
    print(
        f"{target}: {len(covered)} inputs cover {len(every)} edges; the seeds alone {seeds_alone}; "
        f"kept {len(chosen)} files ({size} bytes, largest {largest}) covering {len(got)}"
    )


if __name__ == "__main__":
    main()
