# Shared by the launch scripts: install what the project needs, build, and set the
# environment mpirun needs here. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.build/release/goml-dist"

# Installs the Debian packages the build and mpirun need, and any named (launch/slurm asks
# for slurm-wlm and munge), when any is missing.
ensure_packages() {
    local missing=()
    for p in libopenmpi-dev openmpi-bin libopenblas-dev libdnnl-dev "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "launch: installing ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_release() {
    (cd "$ROOT" && swift build -c release --product goml-dist 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' ) >&2
    [ -x "$BIN" ] || { echo "launch: build failed: $BIN missing" >&2; exit 1; }
    # What `goml-dist --version` names: the commit, "-dirty" when the tree has changes.
    git -C "$ROOT" describe --always --dirty > "$BIN.commit" 2>/dev/null || rm -f "$BIN.commit"
}

# `SCRIPT --help` (or -h) anywhere in the arguments prints the script's header comment and exits,
# before anything is installed or built.
usage_on_help() {
    local a
    for a in "$@"; do
        case "$a" in
            -h|--help) sed -n '2,/^[^#]/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
            --) return ;;
        esac
    done
}

# mpirun refuses to start as root unless told it may; containers and CI run as root.
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# The mpirun options every launch uses: ranks that wait yield the core instead of spinning
# (oversubscribed ranks would otherwise starve rank 0), and no core binding.
MPIRUN_OPTS=(--bind-to none --mca mpi_yield_when_idle 1)

# Closes every descriptor of this (sub)shell but stdin, stdout and stderr. What the launcher
# starts must not hold its other descriptors past its own end: a supervisor may learn of the
# launcher's exit through one (Swift's Foundation.Process does, by a socket every descendant
# inherits), and a process that outlives the job would hide that exit.
close_inherited_fds() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd="${fd##*/}"
        [ "$fd" -gt 2 ] && eval "exec $fd>&-"   # closing one that is closed already is no error
    done
    return 0
}

# Filters mpirun's stderr: drops its two paragraphs that only say a rank exited non-zero, so a
# rank's own one-line error stays the last line; keeps every other note (a lost host, a signal).
# (mpirun -q would drop those too.) Bash's read takes a pipe a byte at a time, so each line
# passes at once; awk (mawk) would hold it until its buffer fills or every writer is gone.
mpirun_notes() {
    local line block="" open=0 rule='^-{30,}$' exited='Primary job +terminated normally|exited with non-zero status'
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ $line =~ $rule ]]; then
            block+="$line"$'\n'
            if [ $open -eq 1 ]; then
                [[ $block =~ $exited ]] || printf '%s' "$block"
                block=""
            fi
            open=$((1 - open))
        elif [ $open -eq 1 ]; then
            block+="$line"$'\n'
        else
            printf '%s\n' "$line"
        fi
    done
    printf '%s' "$block"
}
