#!/bin/bash
# mimir-shard: one shard of `mimir batch` on one DNAnexus instance (see docs/ukb-rap.md).
#
# DNAnexus runs main() with each input as a shell variable: file inputs as
# {"$dnanexus_link": ...} (what `dx download` takes), arrays as bash arrays.
# The job restores the shard's checkpoint from $output_folder if an earlier
# instance left one, runs the shard, saves a checkpoint every few minutes,
# and uploads one archive: shard-<i>-of-<N>.tar.gz. Nothing here reaches the
# internet: mimir comes from the wheels in resources/ (or is already on the
# image), the modules from the project.

main() {
    set -euo pipefail
    local work="${MIMIR_WORK:-$HOME/mimir-work}"
    mkdir -p "$work"

    if ! command -v mimir >/dev/null 2>&1; then
        python3 -m pip install --quiet --no-index --find-links /opt/mimir/wheels ukb-mimir
    fi

    export MIMIR_HOME="$work/mimir-home"
    export MIMIR_CACHE="$work/cache"
    mkdir -p "$MIMIR_HOME"
    dx download "$modules" -o "$work/modules.tar.gz" -f
    tar -xzf "$work/modules.tar.gz" -C "$MIMIR_HOME"
    dx download "$listing" -o "$work/listing.json" -f

    local args=(--mount "${mount:-/mnt/project}" --stage "$work/stage" --format parquet)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        args+=(--gpu 0)
    else
        args+=(--device cpu)
    fi
    if [ -n "${instance:-}" ]; then args+=(--instance "$instance"); fi
    if [ -n "${module+x}" ]; then
        local m
        for m in "${module[@]}"; do args+=(-m "$m"); done
    fi
    local extra=""
    printf -v extra '%q ' "${args[@]}"
    extra="$extra ${batch_args:-}"

    local report_flag=()
    if [ "${report:-false}" = "true" ]; then report_flag=(--report); fi

    # output_folder is a folder of the job's project; one given with its project (PROJECT:/x) is kept as it is
    local folder="${DX_PROJECT_CONTEXT_ID}:${output_folder}"
    case "$output_folder" in *:*) folder="$output_folder" ;; esac

    mimir rap run-shard "$work/listing.json" \
        --folder "$folder" \
        --shard-index "$shard_index" --num-shards "$num_shards" \
        --work "$work" \
        --checkpoint-minutes "${checkpoint_minutes:-10}" \
        --checkpoint-subjects "${checkpoint_subjects:-500}" \
        "${report_flag[@]}" \
        --batch-args "$extra"
}
