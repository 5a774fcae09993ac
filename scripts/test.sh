#!/usr/bin/env bash
# test.sh is `make test` after the dev environment is up: it runs every
# module's tests (go test does not cross go.work module boundaries), prints
# one line per package, the full verbose output of any module that failed,
# and a closing "N passed, N failed, N skipped" line.
set -uo pipefail
cd "$(dirname "$0")/.."
all=$(mktemp); mod=$(mktemp)
trap 'rm -f "$all" "$mod"' EXIT
status=0
for d in $(go list -f '{{.Dir}}' -m); do
  echo "== ${d#"$PWD"/}"
  if ! (cd "$d" && go test -count=1 -timeout 25m -v ./... > "$mod" 2>&1); then
    status=1
    cat "$mod"
  else
    grep -E '^(ok|FAIL|\?)\s' "$mod"
  fi
  cat "$mod" >> "$all"
done
passed=$(grep -cE '^\s*--- PASS' "$all")
failed=$(grep -cE '^\s*--- FAIL' "$all")
skipped=$(grep -cE '^\s*--- SKIP' "$all")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # a build or set-up failure
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
