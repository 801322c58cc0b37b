#!/usr/bin/env bash
# Mutation check: do the tests catch what they claim? Injects each fault of a list
# (default scripts/mutations.txt; its header describes the format) alone into a scratch
# copy of the tree, rebuilds it, runs the C tests (ctest) and the busted specs there,
# and reports per fault "caught", "SURVIVED", "does not apply" (the text to replace is
# not there, or not exactly once) or "does not build". Ends with one summary line; exits
# 1 when a fault survived or did not apply or build. Not part of scripts/test.sh: slow.
#
#   bash scripts/mutate.sh [LIST]
#
# The copy holds the files git knows of (tracked, plus untracked ones not ignored) as
# they are in the working tree; NPIPE_MUTATE_REV=HEAD takes a commit (git archive)
# instead. First the unmutated copy must pass (the baseline; NPIPE_MUTATE_BASELINE=0
# skips it). Per fault, ctest runs first, then the entry's own specs (if any), then,
# only if those pass, the whole suite; busted stops at the first failure.
# NPIPE_MUTATE_SPECS replaces "the whole suite" by the spec files it names.
# NPIPE_MUTATE_ONLY="1 3" runs only those entries (numbered from 1 in list order).
# Every step runs under `timeout`: a hang counts as a failure, not as a pass.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIST=$(realpath "${1:-$ROOT/scripts/mutations.txt}")
SUITE_TIMEOUT=${NPIPE_MUTATE_TIMEOUT:-900}
[ -f "$LIST" ] || { echo "mutate: no list $LIST" >&2; exit 2; }

WORK=$(mktemp -d /tmp/npipe-mutate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK" # some specs run clients as another user, who must read the copy's Lua files
COPY=$WORK/tree
PRISTINE=$WORK/pristine
mkdir -p "$COPY" "$PRISTINE"

if [ -n "${NPIPE_MUTATE_REV:-}" ]; then
  git -C "$ROOT" archive "$NPIPE_MUTATE_REV" | tar -x -C "$PRISTINE"
else
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -x -C "$PRISTINE"
fi
cp -a "$PRISTINE/." "$COPY/"

# The list as records: number, file, find, replace, specs, what (one file per field,
# in $WORK/faults/N/), with \n, \t and \\ decoded in find and replace.
python3 - "$LIST" "$WORK/faults" <<'EOF'
import os, sys
src, out = sys.argv[1], sys.argv[2]
def decode(s):
    res, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "nt\\":
            res.append({"n": "\n", "t": "\t", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            res.append(s[i])
            i += 1
    return "".join(res)
entries, cur = [], {}
for line in open(src).read().split("\n") + [""]:
    if line.startswith("#"):
        continue
    if line.strip() == "":
        if cur:
            entries.append(cur)
            cur = {}
        continue
    key, sep, value = line.partition(":")
    if not sep or key not in ("what", "file", "find", "replace", "specs"):
        sys.exit("mutate: bad line in %s: %r" % (src, line))
    cur[key] = value[1:] if value.startswith(" ") else value
for n, e in enumerate(entries, 1):
    for k in ("what", "file", "find", "replace"):
        if k not in e:
            sys.exit("mutate: entry %d (%s) has no %s:" % (n, e.get("what", "?"), k))
    d = os.path.join(out, str(n))
    os.makedirs(d)
    for k in ("what", "file", "specs"):
        open(os.path.join(d, k), "w").write(e.get(k, ""))
    for k in ("find", "replace"):
        open(os.path.join(d, k), "w").write(decode(e[k]))
EOF

# Replaces the exact text once; fails (prints how often it was found) unless it occurs once.
apply_fault() { # dir
  python3 - "$COPY/$(cat "$1/file")" "$1/find" "$1/replace" <<'EOF'
import sys
path, find, repl = sys.argv[1], open(sys.argv[2]).read(), open(sys.argv[3]).read()
try:
    text = open(path).read()
except OSError as e:
    print("no file: %s" % e.strerror); sys.exit(1)
n = text.count(find) if find else 0
if n != 1:
    print("found %d times" % n); sys.exit(1)
open(path, "w").write(text.replace(find, repl))
EOF
}

build() { (cd "$COPY" && timeout 600 bash scripts/build.sh) >"$WORK/build.log" 2>&1; }

# Runs the C tests, then busted on the given spec files (all specs when none), in the
# copy. Prints what failed; returns 1 if anything did.
run_tests() { # stage specs...
  local stage=$1
  shift
  if [ "$stage" = ctest ]; then
    if ! (cd "$COPY/build" && timeout 300 ctest --output-on-failure) >"$WORK/ctest.log" 2>&1; then
      echo "ctest: $(grep -E '^[[:space:]]*[0-9]+ - ' "$WORK/ctest.log" | sed -E 's/^[[:space:]]*[0-9]+ - //' | tr '\n' ' ')"
      grep -m3 -E 'CHECK failed|gave up' "$WORK/ctest.log" | sed 's/^/        /' || true
      return 1
    fi
    return 0
  fi
  local rc=0
  (cd "$COPY" && source scripts/env.sh &&
    timeout "$SUITE_TIMEOUT" lua5.4 /usr/bin/busted --no-keep-going -o plainTerminal "$@") \
    >"$WORK/busted.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    local failed
    failed=$(grep -A1 -E '^(Failure|Error) -> ' "$WORK/busted.log" | grep -v -E '^(Failure|Error) -> |^--$' |
      head -3 | tr '\n' ';' || true)
    [ "$rc" -eq 124 ] && failed="timed out after ${SUITE_TIMEOUT}s; $failed"
    [ -n "$failed" ] || failed="busted exited $rc: $(tail -3 "$WORK/busted.log" | tr '\n' ' ')"
    echo "$stage: $failed"
    return 1
  fi
  return 0
}

# The whole suite, or NPIPE_MUTATE_SPECS.
read -r -a SUITE <<<"${NPIPE_MUTATE_SPECS:-}"

start=$(date +%s)
echo "mutate: copy in $COPY, list $LIST"
build || { echo "mutate: the unmutated copy does not build:"; tail -20 "$WORK/build.log"; exit 1; }
if [ "${NPIPE_MUTATE_BASELINE:-1}" != 0 ]; then
  t0=$(date +%s)
  if ! why=$(run_tests ctest) || ! why=$(run_tests suite "${SUITE[@]}"); then
    echo "mutate: the unmutated copy fails, so no fault could survive: $why"
    exit 1
  fi
  echo "baseline: C tests and specs pass without faults ($(( $(date +%s) - t0 )) s)"
fi

caught=0 survived=0 notapplied=0 nobuild=0 total=0
for dir in $(seq 1 "$(find "$WORK/faults" -mindepth 1 -maxdepth 1 -type d | wc -l)"); do
  d=$WORK/faults/$dir
  if [ -n "${NPIPE_MUTATE_ONLY:-}" ] && ! [[ " $NPIPE_MUTATE_ONLY " == *" $dir "* ]]; then continue; fi
  total=$((total + 1))
  file=$(cat "$d/file")
  what=$(cat "$d/what")
  t0=$(date +%s)
  if ! why=$(apply_fault "$d"); then
    echo "[$dir] does not apply ($file: $why): $what"
    notapplied=$((notapplied + 1))
    continue
  fi
  if ! build; then
    echo "[$dir] does not build ($file): $what"
    sed -n '/error/{p;q}' "$WORK/build.log" | sed 's/^/      /'
    nobuild=$((nobuild + 1))
  else
    read -r -a own <<<"$(cat "$d/specs")"
    result=SURVIVED
    if why=$(run_tests ctest); then
      if [ "${#own[@]}" -gt 0 ] && ! why=$(run_tests "${own[*]}" "${own[@]}"); then
        result=caught
      elif why=$(run_tests suite "${SUITE[@]}"); then
        why="ctest and ${NPIPE_MUTATE_SPECS:-all specs} pass"
      else
        result=caught
      fi
    else
      result=caught
    fi
    echo "[$dir] $result ($(( $(date +%s) - t0 )) s): $what"
    echo "      $why"
    if [ "$result" = caught ]; then caught=$((caught + 1)); else survived=$((survived + 1)); fi
  fi
  cp "$PRISTINE/$file" "$COPY/$file" # a new mtime: the next build recompiles it
done

echo "mutate: $total faults: $caught caught, $survived SURVIVED, $notapplied do not apply, $nobuild do not build ($(( $(date +%s) - start )) s)"
[ "$survived" -eq 0 ] && [ "$notapplied" -eq 0 ] && [ "$nobuild" -eq 0 ]
