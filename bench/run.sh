#!/usr/bin/env bash
# fio benchmark: a dmfuse `linear` device vs. the raw backing file vs. qemu-storage-daemon's
# FUSE export, all on one backing image.  See bench/README.md.
#
#   PEERS="raw qsd dmfuse" BENCH_SIZE=1G BENCH_RUNTIME=15 bench/run.sh
#   PEERS="raw qsd-direct dmfuse-direct" BENCH_CACHE=drop bench/run.sh   # bypass mode
#   PEERS="dmfuse dmfuse-stats" ...   # dmfuse-stats: a dm-stats region over the whole device
#
# Everything it creates lives in bench/work/ (gitignored); the report goes to bench/RESULTS.md.
set -euo pipefail

# The exact command, for the report: every knob that was set in the environment, then argv.
KNOBS=(PEERS BENCH_SIZE BENCH_RUNTIME BENCH_RAMP BENCH_CACHE BENCH_VIA_LOOP BENCH_WORKLOADS
       BENCH_ENGINES BENCH_WORK BENCH_REPORT BENCH_QSD_IOTHREAD DMFUSE QSD)
COMMAND_LINE=""
for k in "${KNOBS[@]}"; do
    if [[ -n "${!k+x}" ]]; then COMMAND_LINE+="$k=$(printf '%q' "${!k}") "; fi
done
COMMAND_LINE+="bench/run.sh"
for a in "$@"; do COMMAND_LINE+=" $(printf '%q' "$a")"; done

if [[ $# -gt 0 ]]; then
    echo "usage: [PEERS=...] [BENCH_*=...] $0   (all settings are environment variables)" >&2
    exit 2
fi

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"

PEERS="${PEERS:-raw qsd dmfuse}"
BENCH_SIZE="${BENCH_SIZE:-1G}"
BENCH_RUNTIME="${BENCH_RUNTIME:-15}"
BENCH_RAMP="${BENCH_RAMP:-2}"
BENCH_CACHE="${BENCH_CACHE:-warm}"            # warm | drop  (backing file, before every job)
BENCH_VIA_LOOP="${BENCH_VIA_LOOP:-0}"
BENCH_WORKLOADS="${BENCH_WORKLOADS:-seqread seqwrite randread randwrite}"
BENCH_ENGINES="${BENCH_ENGINES:-psync libaio}"
BENCH_WORK="${BENCH_WORK:-$BENCH_DIR/work}"
BENCH_REPORT="${BENCH_REPORT:-$BENCH_DIR/RESULTS.md}"
BENCH_QSD_IOTHREAD="${BENCH_QSD_IOTHREAD:-0}"
DMFUSE="${DMFUSE:-$REPO/.venv/bin/dmfuse}"   # i.e. $(dirname "$0")/../.venv/bin/dmfuse
QSD="${QSD:-qemu-storage-daemon}"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------- checks
command -v fio >/dev/null || die "fio is not installed"
command -v python3 >/dev/null || die "python3 is needed for the report"
case "$BENCH_CACHE" in warm|drop) ;; *) die "BENCH_CACHE must be warm or drop" ;; esac
[[ "$BENCH_RUNTIME" =~ ^[0-9]+$ && "$BENCH_RAMP" =~ ^[0-9]+$ ]] \
    || die "BENCH_RUNTIME and BENCH_RAMP are whole seconds"
SIZE_BYTES="$(numfmt --from=iec "$BENCH_SIZE")" || die "bad BENCH_SIZE=$BENCH_SIZE"
(( SIZE_BYTES >= 1048576 && SIZE_BYTES % 1048576 == 0 )) \
    || die "BENCH_SIZE must be a whole number of MiB (got $SIZE_BYTES bytes)"
SECTORS=$(( SIZE_BYTES / 512 ))
if [[ "$BENCH_VIA_LOOP" == 1 && "$(id -u)" != 0 ]]; then
    die "BENCH_VIA_LOOP=1 needs root (losetup)"
fi

# Workload table: name -> "rw bs".  Engines: name -> "ioengine iodepth".
declare -A WL=([seqread]="read 1M" [seqwrite]="write 1M" [randread]="randread 4k"
               [randwrite]="randwrite 4k")
declare -A ENG=([psync]="psync 1" [libaio]="libaio 16")
for w in $BENCH_WORKLOADS; do [[ -n "${WL[$w]+x}" ]] || die "unknown workload $w"; done
for e in $BENCH_ENGINES; do [[ -n "${ENG[$e]+x}" ]] || die "unknown engine $e"; done

mkdir -p "$BENCH_WORK"
BENCH_WORK="$(cd "$BENCH_WORK" && pwd)"   # absolute: qsd chdir("/")s when it daemonizes
IMG="$BENCH_WORK/backing.img"
RESULTS="$BENCH_WORK/results"
MNT="$BENCH_WORK/mnt"
JOBS_TSV="$RESULTS/jobs.tsv"

# ---------------------------------------------------------------------------- cleanup
# Everything we set up is registered here the moment it exists, and torn down in reverse.
LOOPS=()          # loop devices we attached
QSD_PIDFILES=()   # qemu-storage-daemon pid files
QSD_MOUNTS=()     # their mountpoints (regular files)
DM_MOUNTS=()      # dmfuse mountpoints (directories)

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

detach_loop() {
    local l="$1" n i
    losetup -d "$l" 2>/dev/null || log "warning: losetup -d $l failed"
    n="$(basename "$l")"
    for i in $(seq 50); do   # the loop lets go of its file asynchronously
        [[ -e "/sys/block/$n/loop/backing_file" ]] || break
        sleep 0.1
    done
}

stop_qsd() {
    local pidfile="$1" mp="$2" pid="" i
    [[ -s "$pidfile" ]] && pid="$(cat "$pidfile")"
    if [[ -n "$pid" ]] && grep -q '^qemu-storage' "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "warning: qemu-storage-daemon $pid ignored SIGTERM, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$pidfile"
    if is_mounted "$mp"; then
        log "warning: $mp still mounted after qsd exit, unmounting"
        fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    fi
}

stop_dmfuse() {
    local mp="$1"
    if is_mounted "$mp"; then
        "$DMFUSE" umount "$mp" >/dev/null 2>&1 || true
    fi
    if is_mounted "$mp"; then
        log "warning: dmfuse umount left $mp mounted, using fusermount3 -u"
        fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    fi
}

# Never fails (safe both mid-run under set -e and from the EXIT trap).
teardown() {
    local i
    for (( i=${#LOOPS[@]}-1; i>=0; i-- )); do detach_loop "${LOOPS[i]}" || true; done
    LOOPS=()
    for (( i=${#QSD_PIDFILES[@]}-1; i>=0; i-- )); do
        stop_qsd "${QSD_PIDFILES[i]}" "${QSD_MOUNTS[i]}" || true
    done
    QSD_PIDFILES=(); QSD_MOUNTS=()
    for (( i=${#DM_MOUNTS[@]}-1; i>=0; i-- )); do stop_dmfuse "${DM_MOUNTS[i]}" || true; done
    DM_MOUNTS=()
    return 0
}
trap 'set +e; teardown' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------------------- backing image
prepare_image() {
    local stamp="$IMG.filled"
    if [[ -f "$IMG" && "$(stat -c %s "$IMG")" == "$SIZE_BYTES" && -f "$stamp" ]]; then
        log "reusing $IMG ($BENCH_SIZE, filled $(cat "$stamp"))"
        return
    fi
    log "creating $IMG: $BENCH_SIZE of random data (once)"
    rm -f "$IMG" "$stamp"
    dd if=/dev/urandom of="$IMG.tmp" bs=1M count=$(( SIZE_BYTES / 1048576 )) \
        iflag=fullblock conv=fsync status=none
    mv "$IMG.tmp" "$IMG"
    date -Is > "$stamp"
}

# Same policy for every peer, before every job: flush what the last job dirtied, then either
# read the whole backing file into the page cache (warm) or evict it from there (drop).
prepare_cache() {
    sync "$IMG"
    if [[ "$BENCH_CACHE" == warm ]]; then
        dd if="$IMG" of=/dev/null bs=1M status=none
    else
        dd if="$IMG" iflag=nocache count=0 status=none
    fi
}

cached_bytes() {
    fincore --bytes --noheadings --output RES "$IMG" 2>/dev/null | tr -d ' ' || echo "?"
}

# ---------------------------------------------------------------------------- peers
# peer_up PEER: set TARGET (the file or device fio opens) or return 1 with SKIP_REASON set.
TARGET=""
SKIP_REASON=""
declare -A SKIPPED=()
declare -A PEER_INFO=()

peer_up() {
    local peer="$1"
    case "$peer" in
    raw|rawbuf)
        TARGET="$IMG" ;;
    qsd|qsd-direct)
        if ! command -v "$QSD" >/dev/null; then
            SKIP_REASON="$QSD not found (Debian: apt-get install qemu-system-common)"
            return 1
        fi
        # qsd-direct: the backing file opened O_DIRECT, with Linux native AIO
        local cache="cache.direct=off"
        [[ "$peer" == qsd-direct ]] && cache="cache.direct=on,aio=native"
        local mp="$MNT/$peer.img" pidfile="$BENCH_WORK/$peer.pid" extra=() exopt=""
        mkdir -p "$MNT"
        if is_mounted "$mp"; then
            log "cleaning up a stale qsd export at $mp (interrupted earlier run?)"
            stop_qsd "$pidfile" "$mp"
        fi
        : > "$mp"   # a FUSE export mounts over an existing regular file
        if [[ "$BENCH_QSD_IOTHREAD" == 1 ]]; then
            extra=(--object iothread,id=iot0); exopt=",iothread=iot0"
        fi
        rm -f "$pidfile"
        QSD_PIDFILES+=("$pidfile"); QSD_MOUNTS+=("$mp")
        local rc=0
        "$QSD" "${extra[@]}" \
            --blockdev "driver=file,node-name=prot,filename=$IMG,$cache" \
            --export "type=fuse,id=exp0,node-name=prot,mountpoint=$mp,writable=on$exopt" \
            --pidfile "$pidfile" --daemonize 2>"$BENCH_WORK/$peer.log" || rc=$?
        if (( rc != 0 )); then
            SKIP_REASON="$QSD failed (exit $rc): $(tr '\n' ' ' < "$BENCH_WORK/$peer.log")"
            return 1
        fi
        is_mounted "$mp" || { SKIP_REASON="qsd started but $mp is not mounted"; return 1; }
        PEER_INFO[$peer]="$("$QSD" --version | sed -n 1p); $cache; iothread=$BENCH_QSD_IOTHREAD"
        PEER_INFO[$peer]+="; mount: $(findmnt -rn -o OPTIONS --mountpoint "$mp")"
        TARGET="$mp" ;;
    dmfuse|dmfuse-direct|dmfuse-stats)
        if [[ ! -x "$DMFUSE" ]]; then
            SKIP_REASON="$DMFUSE not found (pip install -e . in the venv, or set DMFUSE=)"
            return 1
        fi
        if ! "$DMFUSE" --version >/dev/null 2>&1; then
            SKIP_REASON="$DMFUSE --version fails: the CLI is not usable yet"
            return 1
        fi
        # dmfuse-direct: the backing file opened O_DIRECT (mount -o cache=none)
        local mp="$MNT/$peer" tables="$BENCH_WORK/$peer-tables" i out opts=()
        [[ "$peer" == dmfuse-direct ]] && opts=(-o cache=none)
        mkdir -p "$mp" "$tables"
        if is_mounted "$mp"; then
            log "cleaning up a stale dmfuse mount at $mp (interrupted earlier run?)"
            stop_dmfuse "$mp"
        fi
        rm -f "$tables"/*.table
        printf '0 %d linear %s 0\n' "$SECTORS" "$IMG" > "$tables/lin.table"
        DM_MOUNTS+=("$mp")
        if ! out="$("$DMFUSE" mount "${opts[@]}" "$tables" "$mp" 2>&1)"; then
            SKIP_REASON="dmfuse mount failed: $(tr '\n' ' ' <<<"$out")"
            return 1
        fi
        for i in $(seq 100); do [[ -e "$mp/lin" ]] && break; sleep 0.1; done
        [[ -e "$mp/lin" ]] || { SKIP_REASON="dmfuse mounted but $mp/lin never appeared"; return 1; }
        if [[ "$peer" == dmfuse-stats ]] \
            && ! out="$("$DMFUSE" -m "$mp" message lin 0 @stats_create - /1 2>&1)"; then
            SKIP_REASON="dmfuse @stats_create failed: $out"
            return 1
        fi
        PEER_INFO[$peer]="$("$DMFUSE" --version 2>&1 | sed -n 1p)${opts[*]:+; ${opts[*]}}"
        [[ "$peer" == dmfuse-stats ]] && PEER_INFO[$peer]+="; dm-stats region - /1"
        PEER_INFO[$peer]+="; mount: $(findmnt -rn -o OPTIONS --mountpoint "$mp")"
        TARGET="$mp/lin" ;;
    *)
        die "unknown peer '$peer' (known: raw rawbuf qsd dmfuse qsd-direct dmfuse-direct dmfuse-stats)" ;;
    esac
}

peer_abort() {   # undo whatever a failed peer_up left behind
    case "$1" in
    qsd|qsd-direct) stop_qsd "$BENCH_WORK/$1.pid" "$MNT/$1.img" ;;
    dmfuse|dmfuse-direct|dmfuse-stats) stop_dmfuse "$MNT/$1" ;;
    esac
}

# ---------------------------------------------------------------------------- jobs
FAILED=0

run_job() {   # run_job LABEL TARGET DIRECT WORKLOAD ENGINE
    local label="$1" target="$2" direct="$3" w="$4" e="$5" rw bs eng qd out res load rc=0
    read -r rw bs <<<"${WL[$w]}"
    read -r eng qd <<<"${ENG[$e]}"
    out="$RESULTS/$label/$w-$e.json"
    mkdir -p "$RESULTS/$label"
    prepare_cache
    res="$(cached_bytes)"
    load="$(cut -d' ' -f1 /proc/loadavg)"
    log "$label: $w $e (rw=$rw bs=$bs $eng qd=$qd) cached=$res load=$load"
    fio --name="$label-$w-$e" --filename="$target" --allow_file_create=0 \
        --rw="$rw" --bs="$bs" --ioengine="$eng" --iodepth="$qd" --direct="$direct" \
        --size="$SIZE_BYTES" --invalidate=0 --time_based --runtime="$BENCH_RUNTIME" \
        --ramp_time="$BENCH_RAMP" --output-format=json --output="$out" \
        2>"$RESULTS/$label/$w-$e.stderr" || rc=$?
    if (( rc != 0 )); then
        log "  FAILED (fio rc=$rc): $(tr '\n' ' ' < "$RESULTS/$label/$w-$e.stderr")"
        FAILED=$(( FAILED + 1 ))
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$w" "$e" "$rc" "$res" "$load" \
        "${out#"$RESULTS/"}" >> "$JOBS_TSV"
}

# ---------------------------------------------------------------------------- main
prepare_image
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
printf 'peer\tworkload\tengine\trc\tcached_bytes\tloadavg\tfile\n' > "$JOBS_TSV"
STARTED="$(date -Is)"
# Bring every peer up first, then interleave: for each job, run it on every peer back to back,
# so that load from other users of the machine hits all peers alike.  The peers can share the
# backing file: none of them caches data of its own above the page cache.
LABELS=()
declare -A TARGETS=()
for peer in $PEERS; do
    SKIP_REASON=""
    if ! peer_up "$peer"; then
        log "SKIPPING peer $peer: $SKIP_REASON"
        SKIPPED[$peer]="$SKIP_REASON"
        peer_abort "$peer"
        continue
    fi
    log "peer $peer: fio on $TARGET"
    LABELS+=("$peer"); TARGETS[$peer]="$TARGET"
done
if [[ "$BENCH_VIA_LOOP" == 1 ]]; then
    for peer in "${LABELS[@]}"; do
        [[ "$peer" == qsd || "$peer" == dmfuse ]] || continue
        L="$(losetup --direct-io=on -f --show "${TARGETS[$peer]}")" || true
        # Register whatever got attached to our file, even if losetup complained.
        mapfile -t attached < <(losetup -n -O NAME -j "${TARGETS[$peer]}")
        LOOPS+=("${attached[@]}")
        [[ -n "$L" && ${#attached[@]} -eq 1 ]] \
            || die "losetup on ${TARGETS[$peer]} failed (attached: ${attached[*]:-none})"
        dio="$(cat "/sys/block/$(basename "$L")/loop/dio" 2>/dev/null || echo '?')"
        PEER_INFO[$peer+loop]="$L on ${TARGETS[$peer]}, dio=$dio"
        [[ "$dio" == 1 ]] || log "warning: $L did not get direct I/O (dio=$dio)"
        log "peer $peer+loop: fio on $L (dio=$dio)"
        LABELS+=("$peer+loop"); TARGETS[$peer+loop]="$L"
    done
fi
RAN=("${LABELS[@]}")

for w in $BENCH_WORKLOADS; do
    for e in $BENCH_ENGINES; do
        for label in "${LABELS[@]}"; do
            direct=1
            # rawbuf: buffered, the way qsd and dmfuse do I/O on the backing file
            [[ "$label" == rawbuf ]] && direct=0
            run_job "$label" "${TARGETS[$label]}" "$direct" "$w" "$e"
        done
    done
done
teardown
FINISHED="$(date -Is)"

# ---------------------------------------------------------------------------- metadata + report
skipped_lines=""
for p in "${!SKIPPED[@]}"; do skipped_lines+="$p"$'\t'"${SKIPPED[$p]}"$'\n'; done
info_lines=""
for p in "${!PEER_INFO[@]}"; do info_lines+="$p"$'\t'"${PEER_INFO[$p]}"$'\n'; done

BENCHMETA_COMMAND="$COMMAND_LINE" \
BENCHMETA_STARTED="$STARTED" \
BENCHMETA_FINISHED="$FINISHED" \
BENCHMETA_PEERS="$PEERS" \
BENCHMETA_RAN="${RAN[*]}" \
BENCHMETA_SKIPPED="$skipped_lines" \
BENCHMETA_INFO="$info_lines" \
BENCHMETA_SIZE="$BENCH_SIZE" \
BENCHMETA_SIZE_BYTES="$SIZE_BYTES" \
BENCHMETA_RUNTIME="$BENCH_RUNTIME" \
BENCHMETA_RAMP="$BENCH_RAMP" \
BENCHMETA_CACHE="$BENCH_CACHE" \
BENCHMETA_VIA_LOOP="$BENCH_VIA_LOOP" \
BENCHMETA_QSD_IOTHREAD="$BENCH_QSD_IOTHREAD" \
BENCHMETA_NPROC="$(nproc)" \
BENCHMETA_KERNEL="$(uname -r)" \
BENCHMETA_FIO="$(fio --version)" \
BENCHMETA_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
BENCHMETA_MEM="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
BENCHMETA_BACKING_FS="$(findmnt -n -o FSTYPE,SOURCE -T "$IMG" | tr -s ' ')" \
python3 - "$RESULTS/meta.json" <<'EOF'
import json, os, sys
def table(s):
    return dict(line.split("\t", 1) for line in s.splitlines() if line)
m = {k[10:].lower(): v for k, v in os.environ.items() if k.startswith("BENCHMETA_")}
m["peers"] = m["peers"].split()
m["ran"] = m["ran"].split()
m["skipped"] = table(m["skipped"])
m["info"] = table(m["info"])
with open(sys.argv[1], "w") as f:
    json.dump(m, f, indent=2, sort_keys=True)
EOF

python3 "$BENCH_DIR/report.py" "$RESULTS" -o "$BENCH_REPORT"
log "results: $RESULTS  report: $BENCH_REPORT"
if (( FAILED > 0 )); then
    log "$FAILED job(s) failed, see $RESULTS/*/*.stderr"
    exit 1
fi
