#!/usr/bin/env bash
# Mutation score of wallet-core against the simulator sweep (and, optionally, the core's tests).
#
# RUN BY HAND, NOT IN CI: it builds wallet-core once per mutant in release (incremental, a few
# seconds; plus the core's test binaries with CORE_TESTS=1) and runs a sweep per mutant (about
# 40 s for 200 seeds); the whole list takes about 20 minutes on a 2-core machine.
#
# The mutants are the curated list in scripts/mutants.txt (name, description, exact-text
# substitutions; equivalent ones say why). Nothing is ever applied to the working tree: the
# script extracts `git archive $MUTANTS_REV` (default HEAD) into a private temporary directory,
# applies each mutant there, builds it with its own target directory, runs the tests there,
# restores the copy from a pristine extract (and checks that it matches), and deletes the
# copy at the end.
#
# For each mutant:
#   1. apply it (a mutant whose old text is not found exactly once is reported "does not
#      apply", not scored);
#   2. build wallet-sim in release (a mutant that does not compile is reported, not scored);
#   3. run the sweep `wallet-sim --seeds $SEEDS --quiet $SIM_ARGS`: caught when it exits
#      non-zero; for each invariant named by its `INVARIANT FAILED: <name> (seed N, ...)`
#      lines, the runs in which it failed are counted (a panic in the core, e.g. one of its
#      production asserts, or a time-out also counts);
#   4. with CORE_TESTS=1, `cargo test -p wallet-core --release --no-fail-fast`: caught when it
#      fails (the failing tests are named).
# Then it prints a table and the kill rates over the non-equivalent mutants that applied and
# compiled. The unmutated tree is run first: if its sweep or tests fail, nothing is scored.
#
# Usage:
#   scripts/mutants.sh [--list | --check] [NAME...]
#     NAME...   only these mutants (default: all)
#     --list    print the mutants and exit
#     --check   only check that every mutant applies to $MUTANTS_REV (no build) and exit
#
# Environment:
#   SEEDS=1..200               seeds of the sweep
#   SIM_ARGS=                  extra wallet-sim arguments for the sweep (e.g. "--regions 4")
#   CORE_TESTS=0               1: also run the core's tests per mutant
#   MUTANTS_REV=HEAD           the commit to mutate (read with git archive)
#   MUTANTS_LIST=scripts/mutants.txt
#   MUTANTS_TARGET_DIR=/tmp/mutants-target   cargo target directory (kept between runs, so
#                              dependencies are built once; one run at a time per directory)
#   MUTANTS_OUT=/tmp/mutants-out/<time>-<rev> logs of every build, sweep and test run,
#                              results.tsv and table.md
#   MUTANTS_NICE=10            niceness of builds and runs (the machine is shared)
#   SWEEP_TIMEOUT, TEST_TIMEOUT  seconds per run (default: 10x the unmutated run, at least
#                              120 s / 300 s); a run that times out counts as caught
#   MUTANTS_KEEP=1             keep the temporary copy
set -euo pipefail

die() {
    echo "mutants.sh: $*" >&2
    exit 2
}

trap 'echo "mutants.sh: stopped by a failing command at line $LINENO" >&2' ERR

REPO=$(cd "$(dirname "$0")/.." && pwd)
LIST=${MUTANTS_LIST:-$REPO/scripts/mutants.txt}
REV=${MUTANTS_REV:-HEAD}
SEEDS=${SEEDS:-1..200}
SIM_ARGS=${SIM_ARGS:-}
CORE_TESTS=${CORE_TESTS:-0}
TARGET=${MUTANTS_TARGET_DIR:-/tmp/mutants-target}
NICE=${MUTANTS_NICE:-10}
USER_SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-}
USER_TEST_TIMEOUT=${TEST_TIMEOUT:-}
export PROPTEST_MAX_SHRINK_ITERS=${PROPTEST_MAX_SHRINK_ITERS:-256}

MODE=run
ONLY=()
for a in "$@"; do
    case $a in
        --list) MODE=list ;;
        --check) MODE=check ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) die "unknown option $a (try --help)" ;;
        *) ONLY+=("$a") ;;
    esac
done

[ -f "$LIST" ] || die "no mutant list at $LIST"
command -v python3 >/dev/null || die "python3 is needed (to read the mutant list)"

# The list parser and applier: `list`, `check ROOT`, `apply ROOT NAME`.
mutool() {
    python3 - "$LIST" "$@" <<'PY'
import sys

def parse(path):
    mutants, cur, file, mode, buf, old = [], None, None, None, [], None
    lines = open(path, encoding="utf-8").read().split("\n")
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        if mode == "old":
            if line == "--- new":
                old, buf, mode = "\n".join(buf), [], "new"
            elif line == "--- end":
                sys.exit(f"{where}: `--- end` before `--- new`")
            else:
                buf.append(line)
            continue
        if mode == "new":
            if line == "--- end":
                cur["subs"].append((file, old, "\n".join(buf)))
                buf, mode = [], None
            else:
                buf.append(line)
            continue
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[") and s.endswith("]"):
            name = s[1:-1]
            if not name or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name):
                sys.exit(f"{where}: bad mutant name {name!r}")
            if any(m["name"] == name for m in mutants):
                sys.exit(f"{where}: mutant {name} twice")
            cur = {"name": name, "desc": "", "equivalent": "", "subs": []}
            mutants.append(cur)
            file = None
        elif cur is None:
            sys.exit(f"{where}: text before the first [name]")
        elif s.startswith("desc:"):
            cur["desc"] = s[5:].strip()
        elif s.startswith("equivalent:"):
            cur["equivalent"] = s[11:].strip()
        elif s.startswith("file:"):
            file = s[5:].strip()
        elif line == "--- old":
            if file is None:
                sys.exit(f"{where}: `--- old` before any `file:`")
            mode, buf = "old", []
        else:
            sys.exit(f"{where}: cannot read {line!r}")
    if mode is not None:
        sys.exit(f"{path}: unterminated substitution at the end")
    for m in mutants:
        if not m["subs"]:
            sys.exit(f"{path}: mutant {m['name']} has no substitution")
        if not m["desc"]:
            sys.exit(f"{path}: mutant {m['name']} has no desc")
    return mutants

def substitute(root, m):
    """The new contents of every file the mutant touches, or an error string."""
    files = {}
    for i, (f, old, new) in enumerate(m["subs"], 1):
        if f not in files:
            try:
                files[f] = open(f"{root}/{f}", encoding="utf-8").read()
            except OSError as e:
                return None, f"substitution {i}: cannot read {f}: {e.strerror}"
        n = files[f].count(old)
        if n != 1:
            return None, f"substitution {i}: old text found {n} times in {f}"
        files[f] = files[f].replace(old, new, 1)
    return files, None

def clean(s):
    return s.replace("\t", " ")

mutants = parse(sys.argv[1])
cmd = sys.argv[2]
if cmd == "list":
    for m in mutants:
        files = ",".join(sorted({f for f, _, _ in m["subs"]}))
        print("\t".join([m["name"], clean(m["equivalent"]) or "-", clean(m["desc"]), files]))
elif cmd == "check":
    root, bad = sys.argv[3], 0
    for m in mutants:
        _, err = substitute(root, m)
        print(f"{m['name']}\t{err or 'ok'}")
        bad += err is not None
    sys.exit(1 if bad else 0)
elif cmd == "apply":
    root, name = sys.argv[3], sys.argv[4]
    m = next((m for m in mutants if m["name"] == name), None)
    if m is None:
        sys.exit(f"no mutant {name}")
    files, err = substitute(root, m)
    if err:
        print(err)
        sys.exit(3)
    for f, text in files.items():
        with open(f"{root}/{f}", "w", encoding="utf-8") as out:
            out.write(text)
else:
    sys.exit(f"unknown command {cmd}")
PY
}

# Every mutant: name, equivalent reason (or -), description, files.
LISTING=$(mutool list) || die "cannot read $LIST"
declare -a NAMES=() EQUIV=() DESC=()
while IFS=$'\t' read -r name eq desc _files; do
    [ -n "$name" ] || continue
    NAMES+=("$name")
    EQUIV+=("$eq")
    DESC+=("$desc")
done <<<"$LISTING"
if [ ${#ONLY[@]} -gt 0 ]; then
    for o in "${ONLY[@]}"; do
        printf '%s\n' "${NAMES[@]}" | grep -qx -- "$o" || die "no mutant named $o in $LIST"
    done
fi
selected() {
    [ ${#ONLY[@]} -eq 0 ] && return 0
    local o
    for o in "${ONLY[@]}"; do [ "$o" = "$1" ] && return 0; done
    return 1
}

if [ "$MODE" = list ]; then
    for i in "${!NAMES[@]}"; do
        selected "${NAMES[$i]}" || continue
        eq=""
        [ "${EQUIV[$i]}" != "-" ] && eq=" [equivalent: ${EQUIV[$i]}]"
        printf '%-34s %s%s\n' "${NAMES[$i]}" "${DESC[$i]}" "$eq"
    done
    exit 0
fi

# ---- the private copy ------------------------------------------------------------------------

REVID=$(git -C "$REPO" rev-parse --verify "$REV^{commit}") || die "no commit $REV"
SHORT=${REVID:0:10}
BASE=$(mktemp -d "${TMPDIR:-/tmp}/mutants.XXXXXX")
PRISTINE=$BASE/pristine
TREE=$BASE/tree
cleanup() {
    if [ "${MUTANTS_KEEP:-0}" = 1 ]; then
        echo "mutants.sh: kept $BASE" >&2
    else
        rm -rf "$BASE"
    fi
}
trap cleanup EXIT
mkdir -p "$PRISTINE"
git -C "$REPO" archive --format=tar "$REVID" | tar -x -C "$PRISTINE"
cp -r "$PRISTINE" "$TREE"

# Back to the pristine tree (core/ is copied again, new mtimes, so cargo rebuilds it), checked.
restore_tree() {
    rm -rf "$TREE/core"
    cp -r "$PRISTINE/core" "$TREE/core"
    if ! diff -rq "$PRISTINE" "$TREE" >/dev/null 2>&1; then
        rm -rf "$TREE"
        cp -r "$PRISTINE" "$TREE"
    fi
    diff -rq "$PRISTINE" "$TREE" >/dev/null 2>&1 || die "cannot restore the copy in $TREE"
}

if [ "$MODE" = check ]; then
    echo "mutants of $LIST against $SHORT:"
    status=0
    for i in "${!NAMES[@]}"; do
        n=${NAMES[$i]}
        selected "$n" || continue
        if msg=$(mutool apply "$TREE" "$n"); then
            if diff -rq "$PRISTINE" "$TREE" >/dev/null 2>&1; then
                printf '  %-34s applies but changes nothing\n' "$n"
                status=1
            else
                printf '  %-34s ok\n' "$n"
            fi
        else
            printf '  %-34s DOES NOT APPLY: %s\n' "$n" "$msg"
            status=1
        fi
        restore_tree
    done
    exit $status
fi

# ---- running -----------------------------------------------------------------------------------

OUT=${MUTANTS_OUT:-/tmp/mutants-out/$(date +%Y%m%d-%H%M%S)-$SHORT}
mkdir -p "$OUT" "$TARGET"
exec 9>"$TARGET/.mutants.lock"
flock -n 9 || die "another mutants.sh run uses $TARGET (set MUTANTS_TARGET_DIR)"
SIM=$TARGET/release/wallet-sim
export CARGO_TARGET_DIR=$TARGET
export CARGO_TERM_COLOR=never
# Each mutant changes one line of wallet-core: an incremental release build without debug
# info rebuilds it in seconds instead of a minute or more (measured: 3-9 s a mutant against
# 60-110 s with the workspace's release profile). Override by setting them.
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-0}
export CARGO_PROFILE_RELEASE_INCREMENTAL=${CARGO_PROFILE_RELEASE_INCREMENTAL:-true}

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
log() { echo "mutants.sh: $*" >&2; }

# Builds the sim; 0 if it compiled.
build_sim() {
    (cd "$TREE" && nice -n "$NICE" cargo build --release -p wallet-sim --bin wallet-sim) >"$1" 2>&1
}

# Runs the sweep; sets SWEEP_RESULT ("no" or "yes: ...") and SWEEP_CAUGHT (0/1).
run_sweep() {
    local out=$1 rc=0
    # shellcheck disable=SC2086 # SIM_ARGS is a list of words
    (cd "$TREE" && timeout "$SWEEP_TIMEOUT" nice -n "$NICE" "$SIM" --seeds "$SEEDS" --quiet $SIM_ARGS) \
        >"$out" 2>"$out.stderr" || rc=$?
    SWEEP_CAUGHT=1
    if [ $rc -eq 0 ]; then
        SWEEP_CAUGHT=0
        SWEEP_RESULT=no
    elif [ $rc -eq 124 ]; then
        SWEEP_RESULT="yes: time-out after ${SWEEP_TIMEOUT} s"
    elif grep -q "panicked at" "$out.stderr"; then
        # "thread '...' panicked at core/src/x.rs:97:9:" then the message on the next line.
        local at msg
        at=$(grep -m1 "panicked at" "$out.stderr" | sed -E 's/.*panicked at ([^ ]*):$/\1/; s/.*panicked at //')
        msg=$(grep -m1 -A1 "panicked at" "$out.stderr" | tail -n1 | cut -c1-70)
        SWEEP_RESULT="yes: panic at ${at%:*:*}: $msg"
    elif grep -q "^INVARIANT FAILED: " "$out"; then
        local inv runs
        # Per invariant, the runs (seed, policy) in which it failed.
        inv=$(sed -nE 's/^INVARIANT FAILED: ([A-Za-z0-9_.-]+) \(seed ([0-9]+), policy ([^ ),]*).*/\1\t\2 \3/p' "$out" |
            sort -u | cut -f1 | uniq -c | sort -k1,1nr -k2 |
            awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
        [ -n "$inv" ] || inv=$(sed -nE 's/^INVARIANT FAILED: ([A-Za-z0-9_.-]+).*/\1/p' "$out" | sort -u | paste -sd, | sed 's/,/, /g')
        runs=$(sed -nE 's/^([0-9]+) runs: [0-9]+ passed, ([0-9]+) failed.*/\2\/\1 runs/p' "$out" | tail -n1)
        SWEEP_RESULT="yes: $inv${runs:+ ($runs)}"
    else
        SWEEP_RESULT="yes: exit status $rc ($(tail -n1 "$out.stderr" | cut -c1-60))"
    fi
}

# Builds and runs the core's tests; sets TESTS_RESULT and TESTS_CAUGHT (0/1, or - if the
# tests did not compile).
run_tests() {
    local out=$1 rc=0
    if ! (cd "$TREE" && nice -n "$NICE" cargo test -p wallet-core --release --no-run) >"$out.build" 2>&1; then
        TESTS_CAUGHT=-
        TESTS_RESULT="tests do not compile"
        return
    fi
    (cd "$TREE" && timeout "$TEST_TIMEOUT" nice -n "$NICE" cargo test -p wallet-core --release --no-fail-fast) \
        >"$out" 2>&1 || rc=$?
    TESTS_CAUGHT=1
    if [ $rc -eq 0 ]; then
        TESTS_CAUGHT=0
        TESTS_RESULT=no
    elif [ $rc -eq 124 ]; then
        TESTS_RESULT="yes: time-out after ${TEST_TIMEOUT} s"
    else
        # "Running tests/fold.rs (...)" / "Running unittests src/lib.rs (...)" then
        # "test name ... FAILED".
        local failed n
        failed=$(awk '
            /^ *Running / { t = $2; sub(/^tests\//, "", t); sub(/\.rs$/, "", t); if (t == "unittests") t = "lib" }
            /^ *Doc-tests / { t = "doc" }
            /^test .* \.\.\. FAILED$/ { print t ":" $2 }' "$out")
        n=$(printf '%s\n' "$failed" | grep -c . || true)
        if [ "$n" -gt 0 ]; then
            local more=""
            [ "$n" -le 3 ] || more=", ..."
            TESTS_RESULT="yes: $n failed ($(printf '%s\n' "$failed" | head -n3 | paste -sd, | sed 's/,/, /g')$more)"
        else
            TESTS_RESULT="yes: exit status $rc"
        fi
    fi
}

STARTED=$(now_ms)
log "mutating $SHORT ($REV) in $TREE; target $TARGET; logs in $OUT"
log "sweep: wallet-sim --seeds $SEEDS --quiet $SIM_ARGS; core tests: $([ "$CORE_TESTS" = 1 ] && echo yes || echo no)"

# Pre-flight: which mutants apply.
declare -A APPLIES=()
while IFS=$'\t' read -r n msg; do
    [ -n "$n" ] && APPLIES[$n]=$msg
done < <(mutool check "$TREE" || true)

# The unmutated tree first.
t0=$(now_ms)
build_sim "$OUT/baseline.build.txt" || die "the unmutated tree does not build (see $OUT/baseline.build.txt)"
t1=$(now_ms)
SWEEP_TIMEOUT=${USER_SWEEP_TIMEOUT:-1800}
run_sweep "$OUT/baseline.sweep.txt"
t2=$(now_ms)
[ "$SWEEP_CAUGHT" = 0 ] || die "the unmutated tree fails the sweep ($SWEEP_RESULT; see $OUT/baseline.sweep.txt)"
base_s=$(((t2 - t1 + 999) / 1000))
SWEEP_TIMEOUT=${USER_SWEEP_TIMEOUT:-$((base_s * 10 > 120 ? base_s * 10 : 120))}
log "unmutated: build $(secs $((t1 - t0))) s, sweep $(secs $((t2 - t1))) s: passes (time-out per mutant: $SWEEP_TIMEOUT s)"
if [ "$CORE_TESTS" = 1 ]; then
    TEST_TIMEOUT=${USER_TEST_TIMEOUT:-1800}
    t3=$(now_ms)
    run_tests "$OUT/baseline.tests.txt"
    t4=$(now_ms)
    [ "$TESTS_CAUGHT" = 0 ] || die "the unmutated tree fails the core tests ($TESTS_RESULT; see $OUT/baseline.tests.txt)"
    base_s=$(((t4 - t3 + 999) / 1000))
    TEST_TIMEOUT=${USER_TEST_TIMEOUT:-$((base_s * 10 > 300 ? base_s * 10 : 300))}
    log "unmutated: core tests (build and run) $(secs $((t4 - t3))) s: pass (time-out per mutant: $TEST_TIMEOUT s)"
fi

printf 'mutant\tequivalent\tsweep_caught\tsweep\ttests_caught\ttests\tbuild_s\tsweep_s\ttests_s\n' >"$OUT/results.tsv"
declare -A R_SWEEP=() R_SC=() R_TESTS=() R_TC=() R_STATE=()
total=0
for n in "${NAMES[@]}"; do selected "$n" && total=$((total + 1)); done
k=0
for i in "${!NAMES[@]}"; do
    n=${NAMES[$i]}
    selected "$n" || continue
    k=$((k + 1))
    if [ "${APPLIES[$n]:-}" != ok ]; then
        R_STATE[$n]="does not apply: ${APPLIES[$n]:-?}"
        log "[$k/$total] $n: does not apply (${APPLIES[$n]:-?})"
        printf '%s\t%s\t-\tdoes not apply\t-\t-\t-\t-\t-\n' "$n" "${EQUIV[$i]}" >>"$OUT/results.tsv"
        continue
    fi
    mutool apply "$TREE" "$n" >/dev/null || die "$n: apply failed after the check"
    t0=$(now_ms)
    if ! build_sim "$OUT/$n.build.txt"; then
        t1=$(now_ms)
        err=$(grep -m1 -E '^error' "$OUT/$n.build.txt" | cut -c1-80 || true)
        R_STATE[$n]="does not compile: $err"
        log "[$k/$total] $n: does not compile ($err)"
        printf '%s\t%s\t-\tdoes not compile\t-\t-\t%s\t-\t-\n' "$n" "${EQUIV[$i]}" "$(secs $((t1 - t0)))" >>"$OUT/results.tsv"
        restore_tree
        continue
    fi
    t1=$(now_ms)
    run_sweep "$OUT/$n.sweep.txt"
    t2=$(now_ms)
    R_STATE[$n]=scored
    R_SWEEP[$n]=$SWEEP_RESULT
    R_SC[$n]=$SWEEP_CAUGHT
    R_TESTS[$n]="not run"
    R_TC[$n]=-
    tests_s=-
    if [ "$CORE_TESTS" = 1 ]; then
        run_tests "$OUT/$n.tests.txt"
        t3=$(now_ms)
        R_TESTS[$n]=$TESTS_RESULT
        R_TC[$n]=$TESTS_CAUGHT
        tests_s=$(secs $((t3 - t2)))
    fi
    restore_tree
    log "[$k/$total] $n: build $(secs $((t1 - t0))) s; sweep $(secs $((t2 - t1))) s: ${R_SWEEP[$n]}; core tests${tests_s:+ $tests_s s}: ${R_TESTS[$n]}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "${EQUIV[$i]}" "$SWEEP_CAUGHT" "$SWEEP_RESULT" \
        "${R_TC[$n]}" "${R_TESTS[$n]}" "$(secs $((t1 - t0)))" "$(secs $((t2 - t1)))" "$tests_s" >>"$OUT/results.tsv"
done
ENDED=$(now_ms)

# ---- the table ---------------------------------------------------------------------------------

md() { printf '%s' "$1" | sed 's/|/\\|/g'; }
{
    echo "Mutants of wallet-core at $SHORT; sweep: \`wallet-sim --seeds $SEEDS --quiet${SIM_ARGS:+ $SIM_ARGS}\`; core tests: $([ "$CORE_TESTS" = 1 ] && echo '`cargo test -p wallet-core --release`' || echo 'not run')"
    echo
    echo "| # | mutant | description | caught by the sweep | caught by core tests |"
    echo "| --- | --- | --- | --- | --- |"
    j=0
    scored=0 equiv=0 skipped=0 sweep_k=0 comb_k=0 tests_k=0
    survivors=()
    for i in "${!NAMES[@]}"; do
        n=${NAMES[$i]}
        selected "$n" || continue
        j=$((j + 1))
        desc=${DESC[$i]}
        if [ "${EQUIV[$i]}" != "-" ]; then
            desc="$desc (EQUIVALENT: ${EQUIV[$i]})"
        fi
        state=${R_STATE[$n]}
        if [ "$state" != scored ]; then
            skipped=$((skipped + 1))
            echo "| $j | $n | $(md "$desc") | $(md "$state") | - |"
            continue
        fi
        echo "| $j | $n | $(md "$desc") | $(md "${R_SWEEP[$n]}") | $(md "${R_TESTS[$n]}") |"
        if [ "${EQUIV[$i]}" != "-" ]; then
            equiv=$((equiv + 1))
            continue
        fi
        scored=$((scored + 1))
        s=${R_SC[$n]} t=${R_TC[$n]}
        [ "$s" = 1 ] && sweep_k=$((sweep_k + 1))
        [ "$t" = 1 ] && tests_k=$((tests_k + 1))
        if [ "$s" = 1 ] || [ "$t" = 1 ]; then
            comb_k=$((comb_k + 1))
        fi
        if [ "$s" != 1 ]; then
            if [ "$t" = 1 ]; then survivors+=("$n (core tests only)"); else survivors+=("$n"); fi
        fi
    done
    pct() { [ "$2" -gt 0 ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }' || echo "n/a"; }
    echo
    echo "Sweep kill rate: $sweep_k/$scored non-equivalent mutants ($(pct $sweep_k $scored))."
    if [ "$CORE_TESTS" = 1 ]; then
        echo "Core tests alone: $tests_k/$scored ($(pct $tests_k $scored)). Combined (sweep or core tests): $comb_k/$scored ($(pct $comb_k $scored))."
    else
        echo "Combined kill rate: not measured (CORE_TESTS=1 runs the core tests too)."
    fi
    echo "Equivalent (run, not scored): $equiv. Not applying or not compiling (not scored): $skipped."
    if [ ${#survivors[@]} -gt 0 ]; then
        echo "Not caught by the sweep: ${survivors[*]}."
    fi
    echo "Wall time: $(secs $((ENDED - STARTED))) s (logs: $OUT)."
} | tee "$OUT/table.md"
