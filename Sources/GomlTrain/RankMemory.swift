// RankMemory: what one rank holds for training, counted from the layout and the strategy
// alone. The one formula behind the run header's memory line (Trainer.memorySummary) and
// `goml-dist plan`; the strategies allocate exactly these buffers (tested against them).

import GomlCore

/// Bytes one rank holds for training; `savedBySharding` is what holding the optimizer state
/// whole would add. MPI's own buffers are not counted.
public struct RankMemory: Sendable, Equatable {
    public let parameters: Int, gradients: Int, optimizerState: Int, activations: Int, savedBySharding: Int

    public var total: Int { parameters + gradients + optimizerState + activations }

    /// Rank `rank` of `worldSize` running `mode` with `workers` worker threads, each with a
    /// model of `microBatch` sequences: whole float32 parameters, one gradient buffer per
    /// worker, AdamW's two moments (sharded: of the rank's slice of every `bucketBytes` bucket),
    /// and every worker's activations.
    public static func of(layout: ParameterLayout, mode: ReductionMode, worldSize: Int, rank: Int = 0, workers: Int,
                          microBatch: Int, bucketBytes: Int) -> RankMemory {
        let float = MemoryLayout<Float>.stride, whole = layout.count * float
        var moments = 2 * whole
        if mode == .sharded {
            let shards = ShardLayout(buckets: gradientBuckets(layout, bucketBytes: bucketBytes), ranks: worldSize)
            moments = 2 * float * shards.buckets.indices.reduce(0) { $0 + shards.slice($1, rank: rank).count }
        }
        let activations = workers * float * Transformer.activationCount(config: layout.config, batch: microBatch, seqLen: layout.config.seqLen)
        return RankMemory(parameters: whole, gradients: workers * whole, optimizerState: moments, activations: activations,
                          savedBySharding: 2 * whole - moments)
    }

    /// The run header's line (train and bench print it).
    public var summary: String {
        let saved = savedBySharding > 0 ? String(format: "; sharding saved %.1f MB", Double(savedBySharding) / 1e6) : "; nothing sharded"
        return String(format: "memory per rank: parameters %.1f MB, gradients %.1f MB, optimizer state %.1f MB, activations %.1f MB",
                      Double(parameters) / 1e6, Double(gradients) / 1e6, Double(optimizerState) / 1e6, Double(activations) / 1e6) + saved
    }
}
