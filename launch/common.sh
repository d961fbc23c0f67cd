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

# Filters mpirun's stderr: drops its two paragraphs that only say a rank exited non-zero, so a
# rank's own one-line error stays the last line; keeps every other note (a lost host, a signal).
# (mpirun -q would drop those too.)
mpirun_notes() {
    awk '/^-------------------------------*$/ {
             block = block $0 "\n"
             if (open) { if (block !~ /Primary job +terminated normally|exited with non-zero status/) printf "%s", block; block = ""; fflush() }
             open = !open; next }
         open { block = block $0 "\n"; next }
         { print; fflush() }
         END { printf "%s", block }'
}
