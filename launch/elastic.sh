# Shared by launch/train and launch/slurm/train.sbatch: the world size an elastic relaunch
# uses. Sourced, not run; no side effects.

# elastic_world_size SLOTS BATCH MICRO_BATCH EXACT: the largest world size up to SLOTS that
# keeps the global batch — it divides BATCH, leaves whole micro-batches of MICRO_BATCH (empty:
# any), and is a power of two when EXACT is 1 (--reduction exact); 0 when none does.
elastic_world_size() {
    local slots=$1 batch=$2 micro=$3 exact=$4 np
    for ((np = slots; np >= 1; np--)); do
        (( batch % np == 0 )) || continue
        (( exact == 0 || (np & (np - 1)) == 0 )) || continue
        [ -z "$micro" ] || (( (batch / np) % micro == 0 )) || continue
        echo "$np"
        return
    done
    echo 0
}
