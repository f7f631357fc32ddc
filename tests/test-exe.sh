#!/usr/bin/env bash
# test-exe.sh TEST: build tests/TEST.rs if need be and print the path of its
# test executable, for what runs it without cargo (cargo holds the build
# directory's lock for as long as it runs tests, so a second cargo beside a
# `cargo test` waits for all of it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p amphi-tests --test "$1" --no-run --locked --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1
