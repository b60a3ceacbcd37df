# benches/load/lib.sh: helpers shared by benches/load/run, benches/load/memory and
# scripts/build-pgo. Sourced, not run. Expects REPO and OUT to be set (OUT only for
# build_warden); LOG_NAME names the script in errors.

die() { echo "${LOG_NAME:-load bench}: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# --- Processes and cleanup -------------------------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
# free_port VAR: sets VAR to a loopback port nothing uses now (and not handed out before).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null) ]]; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
}

# render TEMPLATE OUTPUT VAR=value...
render() {
    local tpl=$1 out=$2 kv expr=()
    shift 2
    for kv in "$@"; do
        expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${expr[@]}" "$tpl" >"$out"
    if grep -q '@[A-Z]*@' "$out"; then
        die "unfilled placeholder in $out: $(grep -o '@[A-Z]*@' "$out" | head -1)"
    fi
}

# wait_http URL [expected status] — up to 30 s
wait_http() {
    local url=$1 want=${2:-200} code
    for _ in $(seq 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == "$want" ]] && return 0
        sleep 0.1
    done
    die "$url did not answer $want (last: $code)"
}

# CPU ticks (utime + stime) of a process and its children (nginx workers).
cpu_ticks() {
    local pid=$1 total=0 p f
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
        [[ -r /proc/$p/stat ]] || continue
        # Fields after the command name (which may hold spaces): utime is the 14th field
        # of the whole line, i.e. the 12th after ") ".
        f=$(sed 's/^.*) //' "/proc/$p/stat")
        # shellcheck disable=SC2086
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# build_warden: sets WARDEN_BIN (cargo build --release -p warden unless it is set).
build_warden() {
    if [[ -z ${WARDEN_BIN:-} ]]; then
        log "building warden (cargo build --release -p warden)"
        (cd "$REPO" && cargo build --release -p warden) >"$OUT/build.log" 2>&1 ||
            { tail -30 "$OUT/build.log" >&2; die "cargo build failed (log: $OUT/build.log)"; }
        WARDEN_BIN=$REPO/target/release/warden
    fi
    [[ -x $WARDEN_BIN ]] || die "no warden binary at $WARDEN_BIN"
}

# rss_kb PID: resident set of a process, kB (VmRSS); hwm_kb PID: its peak (VmHWM).
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
