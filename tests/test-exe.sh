#!/usr/bin/env bash
# test-exe.sh TEST...: build tests/TEST.rs of each if need be and print the
# path of its test executable, one a line in the order given, for what runs
# them without cargo (the VM lane's guest has none). One cargo call for all
# of them.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=()
for t in "$@"; do targets+=(--test "$t"); done
cargo test -p amphi-tests "${targets[@]}" --no-run --locked --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
found = {}
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        found[m["target"]["name"]] = m["executable"]
for name in sys.argv[1:]:
    if name not in found:
        sys.exit("test-exe.sh: no test executable " + name)
    print(found[name])' "$@"
