// StepBench: what `bench` measures of training steps: warm-up, then timed steps, each phase's
// median, every rank's wait after backward (to tell communication from waiting for slower
// ranks) and, when a counting malloc is preloaded (AllocationTests), the heap allocations of
// the timed steps. Collective; the command prints the report.

import Foundation
import GomlComm
import GomlCore

public struct StepBenchReport {
    /// Medians over the timed steps, in milliseconds.
    public let ms: Double, forwardMS: Double, forwardWaitMS: Double, backwardMS: Double, reduceMS: Double, optimizerMS: Double
    /// The network's busy time for the gradient, and the share of it hidden behind backward.
    public let busyMS: Double, hiddenShare: Double
    /// Exposed communication of both sides (forward's wait for parameters, the reduce phase).
    public let exposedMS: Double
    /// After backward: the wait of the rank that finished it last (communication alone), and
    /// rank 0's wait beyond that (waiting for slower ranks).
    public let lastRankMS: Double, slowerRanksMS: Double
    /// This rank's line about heap allocations in the timed steps (nil: no counting malloc).
    public let allocations: String?
    /// Throughput at the median step, and its share of the product peak the ranks measured.
    public let tokensPerSecond: Double, modelGFLOPS: Double, mfu: Double?
    /// This process's peak resident memory so far, in MB, as the kernel counts it (VmHWM).
    /// Read by the process itself: a parent's rusage of a child spawned by vfork counts the
    /// parent's own peak from before the exec.
    public let peakResidentMB: Double?
}

/// Where a `bench` run ran, for its report.
public struct BenchContext {
    public var config = "", threads = 1, ranks = 1, precisionReason = "", peakGFLOPS = 0.0, peakSource = ""
    public var gatherPeakMB = 0.0, gatherMBPerStep = 0.0, gatherMBInFlight = 0.0, bucketMB = 1.0
    public var communication = CommunicationSettings()
    public init() {}
}

extension StepBenchReport {
    /// What `bench` prints: the set-up, the median step's phases, communication, throughput,
    /// and last the JSON line (BENCHMARKS.md's and `launch/bench`'s source).
    public func lines(_ trainer: Trainer, _ c: BenchContext, steps: Int) throws -> [String] {
        let o = trainer.options
        let split = [("forward", forwardMS), ("forward wait", forwardWaitMS), ("backward", backwardMS), ("reduce", reduceMS), ("optimizer", optimizerMS)]
        var lines = [
            "bench \(c.config) (\(o.model.summary)), batch \(o.batch) × \(o.model.seqLen), \(c.ranks) rank(s) × \(c.threads) thread(s) (\(trainer.workers) worker(s) × \(trainer.productThreads) product thread(s), \(BLAS.threads) BLAS), reduction \(trainer.strategy.summary) (micro-batch \(trainer.microBatch), activations \(trainer.activationBytes / 1_000_000) MB), BLAS core \(BLAS.coreName)",
            "precision \(o.precision.rawValue) (\(c.precisionReason))",
            String(format: "%@ products 512³ on %d thread(s): %.1f GFLOP/s (the peak MFU is quoted against), ", o.precision.rawValue, c.threads, c.peakGFLOPS)
                + c.peakSource,
            String(format: "median step %.2f ms over %d steps: ", ms, steps) + split.map { String(format: "%@ %.2f", $0.0, $0.1) }.joined(separator: ", ") + " ms",
            // Communication the step waited for: after backward (the reduce phase, against the time the
            // network was busy with the gradient) and in forward (the sharded all-gather still arriving).
            String(format: "gradient all-reduce busy %.2f ms, exposed %.2f ms (%.0f%% hidden behind backward); forward waited %.2f ms for parameters",
                   busyMS, reduceMS, hiddenShare * 100, forwardWaitMS),
        ]
        if c.gatherPeakMB > 0 {
            lines.append(String(format: "parameter all-gathers: %.2f MB a step on the wire, in flight at most %.1f MB at once (--gather-mb-in-flight %g)",
                                c.gatherMBPerStep, c.gatherPeakMB, c.gatherMBInFlight))
        }
        if c.ranks > 1 {
            lines.append(String(format: "after backward, the rank that finished it last waited %.2f ms (communication); rank 0's other %.2f ms was waiting for slower ranks",
                                lastRankMS, slowerRanksMS))
        }
        if let peak = peakResidentMB {
            lines.append(String(format: "peak resident memory %.1f MB (%@; the header's estimate excludes code and libraries)", peak, c.ranks > 1 ? "rank 0" : "this process"))
        }
        lines.append(String(format: "%.0f tokens/s, %.1f GFLOP/s of model FLOPs, ", tokensPerSecond, modelGFLOPS) + ProductPeak.describe(mfu))
        func rounded(_ x: Double, _ places: Double) -> Double { (x * places).rounded() / places }
        let json: [String: Any] = [
            "config": c.config, "threads": c.threads, "ranks": c.ranks, "batch": o.batch, "seq_len": o.model.seqLen,
            "ms_per_step": rounded(ms, 1000), "tokens_per_s": tokensPerSecond.rounded(), "mfu": mfu.map { rounded($0, 10000) } ?? NSNull(),
            "peak_gflops": c.peakGFLOPS.rounded(), "peak_precision": o.precision.rawValue, "peak_source": c.peakSource, "reduction": o.reduction.rawValue,
            "precision": o.precision.rawValue, "blas_core": BLAS.coreName,
            "forward_ms": forwardMS, "backward_ms": backwardMS, "reduce_ms": reduceMS, "optimizer_ms": optimizerMS,
            "comm_ms": busyMS, "exposed_comm_ms": exposedMS,
            "exposed_forward_comm_ms": forwardWaitMS, "exposed_backward_comm_ms": reduceMS, "exposed_backward_last_rank_ms": lastRankMS,
            "waiting_for_slower_ranks_ms": slowerRanksMS, "gather_peak_mb_in_flight": c.gatherPeakMB, "gather_mb_per_step": c.gatherMBPerStep, "hidden_comm_share": rounded(hiddenShare, 1000),
            "overlap": c.communication.overlap, "bucket_mb": c.bucketMB, "grad_compression": c.communication.compression.rawValue,
            "micro_batch": trainer.microBatch, "peak_resident_mb": peakResidentMB.map { rounded($0, 10) } ?? NSNull(),
        ]
        return lines + [try jsonLine(json)]
    }
}

public enum StepBench {
    /// Runs `warmup` then `steps` training steps; `slowRank` sleeps 300 ms before each (a
    /// straggler, for tests). `peakGFLOPS`: one rank's product rate, for MFU.
    public static func run(_ trainer: Trainer, comm: Communicator, warmup: Int, steps: Int, peakGFLOPS: Double, slowRank: Int? = nil) -> StepBenchReport {
        var totals: [Double] = [], phases: [StepTimings] = []
        totals.reserveCapacity(steps)
        phases.reserveCapacity(steps)
        var allocationsBefore = HeapAllocations(total: 0, elsewhere: 0)
        for i in 0..<(warmup + steps) {
            if i == warmup { allocationsBefore = HeapAllocations.count() ?? allocationsBefore }
            if slowRank == comm.rank { usleep(300_000) }
            let r = trainer.trainStep()
            if i >= warmup { totals.append(r.timings.total); phases.append(r.timings) }
        }
        trainer.waitForParameters()
        // Every rank reports its own count: the ranks' communication threads differ in timing.
        var allocations: String?
        if let after = HeapAllocations.count() {
            let total = after.total - allocationsBefore.total
            var line = "\(comm.size > 1 ? "rank \(comm.rank): " : "")heap allocations during the \(steps) timed steps: \(total)"
            if let afterElsewhere = after.elsewhere, let beforeElsewhere = allocationsBefore.elsewhere {
                let elsewhere = afterElsewhere - beforeElsewhere
                line += " (in OpenMPI's libraries \(total - elsewhere), elsewhere \(elsewhere)"
                    + (elsewhere > 0 ? ", the last from \(HeapAllocations.lastElsewhere() ?? "?"))" : ")")
            }
            allocations = line
        }
        // Every rank's wait after backward, step by step: the rank that finished backward last
        // waited for communication alone; the others also waited for it.
        let waits = phases.map(\.reduce)
        var everyRanksWaits = [Double](repeating: 0, count: waits.count * comm.size)
        waits.withUnsafeBufferPointer { mine in everyRanksWaits.withUnsafeMutableBufferPointer { comm.allGather(mine, into: $0) } }
        let lastRankWaits = waits.indices.map { step in (0..<comm.size).map { everyRanksWaits[$0 * waits.count + step] }.min()! }
        func phase(_ path: KeyPath<StepTimings, Double>) -> Double { median(phases.map { $0[keyPath: path] }) * 1000 }
        let busy = phase(\.communication), exposed = phase(\.reduce), ms = median(totals) * 1000
        let o = trainer.options, tokensPerSecond = Double(o.batch * o.model.seqLen) / (ms / 1000)
        let modelGFLOPS = tokensPerSecond * o.model.flopsPerToken / 1e9
        return StepBenchReport(ms: ms, forwardMS: phase(\.forward), forwardWaitMS: phase(\.forwardWait),
                               backwardMS: phase(\.backward), reduceMS: exposed, optimizerMS: phase(\.optimizer),
                               busyMS: busy, hiddenShare: busy > 0 ? max(0, 1 - exposed / busy) : 0,
                               exposedMS: median(phases.map { $0.forwardWait + $0.reduce }) * 1000,
                               lastRankMS: median(lastRankWaits) * 1000, slowerRanksMS: median(zip(waits, lastRankWaits).map { $0 - $1 }) * 1000,
                               allocations: allocations, tokensPerSecond: tokensPerSecond, modelGFLOPS: modelGFLOPS,
                               mfu: ProductPeak.utilization(modelGFLOPS: modelGFLOPS, peakGFLOPS: peakGFLOPS * Double(comm.size)),
                               peakResidentMB: peakResidentMegabytes())
    }

    /// VmHWM from /proc/self/status (nil where there is none).
    static func peakResidentMegabytes() -> Double? {
        kibibytes(in: "/proc/self/status", field: "VmHWM").map { Double($0) * 1024 / 1_000_000 }
    }

    /// Generation speed with and without the KV cache (tokens/s), `tokens` bytes ending at the
    /// end of the context, from the seed's parameters.
    public static func sampling(_ trainer: Trainer, threads: Int, tokens: Int) throws -> (kvCache: Double, noCache: Double) {
        var rng = Xoshiro256(seed: 5)
        trainer.layout.initialise(trainer.params.pointer, rng: &rng)
        let config = trainer.options.model
        var rates: [Double] = []
        for cached in [true, false] {
            let generator = try TextGenerator(config: config, parameters: trainer.params.array, precision: trainer.options.precision, threads: threads)
            let start = Date()
            // A full-context prompt minus the bytes generated keeps the context ≤ seqLen throughout.
            let prompt = [UInt8](repeating: 65, count: max(1, config.seqLen - tokens))
            try generator.generate(prompt: prompt, count: tokens, options: SamplingOptions(temperature: 0.8, topK: 40), seed: 1, useCache: cached) { _ in }
            rates.append(Double(tokens) / Date().timeIntervalSince(start))
        }
        return (rates[0], rates[1])
    }
}

/// The middle value, or the mean of the two middle ones (bench's and CollectiveBench's figures).
func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Heap allocations so far, when a counting malloc shim exporting `goml_heap_allocations` is
/// preloaded (see Tests/EndToEndTests/AllocationTests.swift); `elsewhere` counts those whose
/// caller lies outside OpenMPI's libraries, when the shim exports
/// `goml_heap_allocations_elsewhere`, and `lastElsewhere` names the library the last of them
/// came from.
private struct HeapAllocations {
    let total: Int
    let elsewhere: Int?

    static func count() -> HeapAllocations? {
        func read(_ name: String) -> Int? {
            dlsym(nil, name).map { Int(unsafeBitCast($0, to: (@convention(c) () -> Int).self)()) }
        }
        guard let total = read("goml_heap_allocations") else { return nil }
        return HeapAllocations(total: total, elsewhere: read("goml_heap_allocations_elsewhere"))
    }

    /// Allocates (a String): only once the counts are read.
    static func lastElsewhere() -> String? {
        dlsym(nil, "goml_heap_last_elsewhere").map { String(cString: unsafeBitCast($0, to: (@convention(c) () -> UnsafePointer<CChar>).self)()) }
    }
}
