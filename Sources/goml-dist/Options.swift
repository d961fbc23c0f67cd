// Option bundles shared by the subcommands. `validate()` throws for flag-level problems.

import ArgumentParser
import GomlComm
import GomlCore
import GomlMPI
import GomlTrain

struct ModelOptions: ParsableArguments {
    @Option(help: "Model preset: tiny, nano, small or base.")
    var config: String = "nano"
    @Option(help: "Override the preset's width (C).") var dim: Int?
    @Option(help: "Override the number of layers (L).") var layers: Int?
    @Option(help: "Override the number of heads (H).") var heads: Int?
    @Option(help: "Override the FFN width (F).") var ffn: Int?
    @Option(name: .customLong("seq-len"), help: "Override the context length (T).") var seqLen: Int?
    @Option(name: .customLong("ffn-kind"), help: "Feed-forward block: swiglu or gelu.") var ffnKind: String?

    func model() throws -> ModelConfig {
        var c = try ModelConfig.preset(named: config)
        if let dim { c.dim = dim }
        if let layers { c.layers = layers }
        if let heads { c.heads = heads }
        if let ffn { c.ffn = ffn }
        if let seqLen { c.seqLen = seqLen }
        if let ffnKind {
            guard let kind = FFNKind(rawValue: ffnKind) else { throw ValidationError("unknown --ffn-kind '\(ffnKind)': use swiglu or gelu") }
            c.ffnKind = kind
        }
        try c.validate()
        return c
    }

    /// The preset's name when nothing overrides it; otherwise the dimensions that run.
    func name() throws -> String {
        let c = try model()
        return c == (try ModelConfig.preset(named: config)) ? config : c.summary
    }
}

struct OptimizationOptions: ParsableArguments {
    @Option(help: "Global batch: sequences per step, split over ranks (default: the preset's, tiny 8, nano 12, small 8, base 2).") var batch: Int?
    @Option(help: "Optimiser steps.") var steps: Int = 2000
    @Option(help: "Peak learning rate.") var lr: Double = 1e-3
    @Option(name: .customLong("min-lr"), help: "Final learning rate of the cosine schedule.") var minLR: Double = 1e-4
    @Option(help: "Linear warmup steps.") var warmup: Int = 100
    @Option(help: ArgumentHelp("AdamW beta1.", visibility: .hidden)) var beta1: Float = 0.9
    @Option(help: ArgumentHelp("AdamW beta2.", visibility: .hidden)) var beta2: Float = 0.95
    @Option(name: .customLong("weight-decay"), help: ArgumentHelp("Decoupled weight decay on matrices.", visibility: .hidden)) var weightDecay: Float = 0.1
    @Option(name: .customLong("grad-clip"), help: "Global gradient-norm clip (low-communication training: of the global batch; each worker clips at this × √workers).") var gradClip: Float = 1.0
    @Option(help: "Seed of initialisation and batch sampling.") var seed: UInt64 = 1337

    func apply(to o: inout TrainingOptions, preset: String) {
        o.batch = batch ?? ModelConfig.defaultBatch(forPreset: preset)
        o.steps = steps; o.lr = lr; o.minLR = minLR; o.warmup = warmup; o.seed = seed
        o.optimizer.beta1 = beta1; o.optimizer.beta2 = beta2
        o.optimizer.weightDecay = weightDecay; o.optimizer.gradClip = gradClip
    }
}

struct ParallelOptions: ParsableArguments {
    @Option(help: "Gradient reduction: allreduce (fast, float32 tolerance across world sizes; sharded on several ranks) or exact (bit-identical at any power-of-two world size).")
    var reduction: String = "allreduce"
    @Option(name: .customLong("micro-batch"), help: "Sequences per forward/backward pass: with allreduce a rank accumulates its shard's gradients over micro-batches of N (activation memory bounded by N; default: the whole shard); with exact, the micro-shard size (default 1).")
    var microBatch: Int?
    @Option(help: "Cores per rank (default: the node's cores / its ranks): worker threads that split the rank's sequences, one BLAS thread each, or BLAS threads when the sequences do not split evenly.") var threads: Int?
    @Flag(help: "Run in this process without MPI (for debuggers and valgrind).") var single = false
    @Option(name: .customLong("collective-timeout"), help: ArgumentHelp("Seconds a collective may wait before the job is ended (0: never).", visibility: .hidden))
    var collectiveTimeout: Double = 300
    @Flag(name: .customLong("no-overlap"), help: "Start the gradient all-reduce only after the whole backward pass (instead of bucket by bucket during it).")
    var noOverlap = false
    @Option(name: .customLong("bucket-mb"), help: ArgumentHelp("Size of the gradient buckets whose all-reduce starts as backward finishes them, in MB.", visibility: .hidden))
    var bucketMB: Double = 1
    @Option(name: .customLong("grad-compression"), help: "How gradients travel in the all-reduce: none (float32) or bf16 (half the bytes, summed in float32).")
    var gradCompression: String = "none"
    @Flag(name: .customLong("no-shard"), help: "Keep the whole AdamW state on every rank and all-reduce gradients (the default on several ranks shards them: reduce-scatter, AdamW on 1/N, all-gather).")
    var noShard = false
    @Option(name: .customLong("progress-poll-us"), help: ArgumentHelp("Microseconds the communication thread sleeps between MPI_Test polls (0: yield and poll again); for link-efficiency measurements.", visibility: .hidden))
    var progressPollMicroseconds: UInt32 = ReducerPacing().pollMicroseconds
    @Option(name: .customLong("gather-mb-in-flight"), help: ArgumentHelp("Sharded: MB of parameter all-gathers in flight at once, in forward order (the first bucket at least); for link-efficiency measurements.", visibility: .hidden))
    var gatherMBInFlight: Double = Double(ReducerPacing().gatherBytesInFlight) / 1e6
    @Flag(name: .customLong("gather-fp32-weights"), help: ArgumentHelp("Sharded at bf16: all-gather the matrices as float32, not bf16 (the same bits, twice the bytes); for measurements and the test that they agree.", visibility: .hidden))
    var gatherFP32Weights = false
    @Flag(name: .customLong("no-shared-memory"), help: ArgumentHelp("Sharded with every rank on one host: reduce-scatter the gradients and all-gather the parameters through MPI, as across hosts, instead of summing and copying them in shared memory; for measurements and the MPI path's tests.", visibility: .hidden))
    var noSharedMemory = false
    @Flag(help: ArgumentHelp("With several ranks per host on several hosts: sum each gradient bucket inside the host (shared memory) first, so one copy per host crosses the network instead of about two (measure: it was slower on the test cluster).", visibility: .hidden))
    var hierarchical = false

    func communicator() -> Communicator {
        MPICommunicator.forThisJob(single: single, collectiveTimeout: collectiveTimeout)
    }

    /// The requested reduction (TrainingSetup decides whether it is sharded).
    func mode() throws -> ReductionMode {
        guard let mode = ReductionMode(rawValue: reduction), mode != .sharded else {
            throw ValidationError("unknown --reduction '\(reduction)': use allreduce or exact")
        }
        return mode
    }

    /// The all-reduce settings, or a one-line error naming the flag.
    func communication() throws -> CommunicationSettings {
        var c = CommunicationSettings()
        c.overlap = !noOverlap
        guard bucketMB > 0, bucketMB <= 1024 else { throw ValidationError("--bucket-mb is \(bucketMB); it must lie in (0, 1024]") }
        c.bucketBytes = max(4, Int(bucketMB * 1_000_000))
        guard let compression = GradientCompression(rawValue: gradCompression) else {
            throw ValidationError("unknown --grad-compression '\(gradCompression)': use none or bf16")
        }
        c.compression = compression
        c.hierarchical = hierarchical
        c.sharedMemory = !noSharedMemory
        c.bf16Weights = !gatherFP32Weights
        c.pacing.pollMicroseconds = progressPollMicroseconds
        c.pacing.gatherBytesInFlight = gatherMBInFlight > 0 ? Int(min(gatherMBInFlight, 1e6) * 1e6) : 0
        return c
    }
}

struct PrecisionOptions: ParsableArguments {
    @Option(help: "Matrix products: auto (bf16 when oneDNN reports native bfloat16 dot products on this CPU, else fp32), bf16 (bfloat16 operands, float32 accumulation, master weights and optimiser; emulated, slower than fp32, on AVX-512 CPUs without AVX512_BF16) or fp32.")
    var precision: String = "auto"

    init() {}
    init(precision: String) { self.precision = precision }

    func choice() throws -> PrecisionChoice {
        guard let choice = PrecisionChoice(rawValue: precision) else { throw ValidationError("unknown --precision '\(precision)': use auto, bf16 or fp32") }
        return choice
    }

    /// The precision one process runs on `threads` cores and why; throws when bf16 cannot run here.
    func resolve(threads: Int = 1) throws -> (precision: Precision, reason: String) {
        try choice().resolve(bf16Speedup: PrecisionChoice.measuredBF16Speedup(threads: threads))
    }
}

struct LowCommunicationOptions: ParsableArguments {
    @Option(name: .customLong("sync-every"), help: "Workers train apart and sync every H steps through an outer Nesterov step (1: synchronous training).")
    var syncEvery: Int = 1
    @Option(name: .customLong("outer-lr"), help: ArgumentHelp("Outer learning rate of the sync (1 with momentum 0: plain averaging).", visibility: .hidden))
    var outerLR: Double = 1
    @Option(name: .customLong("outer-momentum"), help: ArgumentHelp("Outer Nesterov momentum of the sync.", visibility: .hidden))
    var outerMomentum: Double = 0
    @Option(name: .customLong("outer-compression"), help: "How the pseudo-gradient travels between workers: none (float32) or bf16.")
    var outerCompression: String = "none"
    @Flag(name: .customLong("overlap-outer"), help: "Run the outer all-reduce during the next inner step and apply the outer update one step late.")
    var overlapOuter = false
    @Option(name: .customLong("workers-per-host"), help: ArgumentHelp("Workers per host (default 1: each host's ranks train as one worker).", visibility: .hidden))
    var workersPerHost: Int?
    @Option(name: .customLong("worker-size"), help: ArgumentHelp("Workers of this many consecutive ranks (instead of per host; for tests on one host).", visibility: .hidden))
    var workerSize: Int?
    @Flag(name: .customLong("fault-outer-no-restart"), help: ArgumentHelp("Workers keep their own parameters after an outer step (tests the agreement check).", visibility: .hidden))
    var faultNoRestart = false
    @Option(name: .customLong("fault-lost-outer-rank"), help: ArgumentHelp("This rank starts no outer all-reduce and stops responding (tests the outer all-reduce's --collective-timeout).", visibility: .hidden))
    var faultLostRank: Int?
    @Flag(name: .customLong("fault-outer-same-data"), help: ArgumentHelp("Every worker samples the same sequences (tests that workers diverge).", visibility: .hidden))
    var faultSameData = false

    /// The low-communication settings, or a one-line error naming the flag.
    func request() throws -> LowCommunicationRequest {
        guard let compression = GradientCompression(rawValue: outerCompression) else {
            throw ValidationError("unknown --outer-compression '\(outerCompression)': use none or bf16")
        }
        var r = LowCommunicationRequest()
        r.syncEvery = syncEvery; r.lr = outerLR; r.momentum = outerMomentum; r.compression = compression; r.overlapped = overlapOuter
        r.workersPerHost = workersPerHost; r.workerSize = workerSize
        return r
    }

    func addFaults(to faults: inout FaultInjection) {
        faults.outerNoRestart = faultNoRestart
        faults.lostOuterRank = faultLostRank
        faults.outerSameData = faultSameData
    }
}
