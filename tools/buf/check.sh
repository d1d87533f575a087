#!/usr/bin/env bash
# Proto lint and breaking-change checks with buf (pinned in tools/buf/package-lock.json).
#
#   tools/buf/check.sh        # or: make buf
#
# Lints protos/ with protos/buf.yaml, then compares protos/ as they are in the
# working tree with the previous commit's (HEAD~1). The breaking check is
# skipped, with a note, when there is no previous commit to compare with (a
# shallow clone, the first commit, or no git checkout at all).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

buf="$here/node_modules/.bin/buf"
if [[ ! -x "$buf" || "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]]; then
    command -v npm >/dev/null || { echo "buf: npm is needed to install buf (Node.js 20 or newer)" >&2; exit 1; }
    echo "buf: installing the pinned buf (npm ci in tools/buf)"
    # buf's postinstall only swaps the JS launcher for the native binary; not needed
    (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

echo "buf lint protos ($("$buf" --version))"
"$buf" lint protos

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "buf breaking: skipped, not a git checkout (nothing to compare with)"
elif [[ "$(git rev-parse --is-shallow-repository)" == "true" ]]; then
    echo "buf breaking: skipped, this is a shallow clone (fetch with --depth 2 or more, or --unshallow, to compare with HEAD~1)"
elif ! git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null; then
    echo "buf breaking: skipped, HEAD has no parent commit to compare with"
else
    echo "buf breaking protos --against HEAD~1"
    "$buf" breaking protos --against '.git#ref=HEAD~1,subdir=protos'
fi
echo "buf: ok"
