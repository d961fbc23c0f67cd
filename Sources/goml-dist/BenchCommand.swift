// `goml-dist bench`: times full training steps (or text generation) and prints the figures
// BENCHMARKS.md records; the last line is JSON for scripts. Timing only, no maths here.

import ArgumentParser
import Foundation
import GomlComm
import GomlCore
import GomlMPI
import GomlTrain

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time full training steps (forward, backward, reduction, clip, AdamW); the last line is JSON.")

    @OptionGroup var model: ModelOptions
    @Option(help: "Global batch (default: the anchors' batch for the preset).") var batch: Int?
    @Option(help: "Timed steps, after warm-up.") var steps: Int = 20
    @Option(help: "Warm-up steps, not timed.") var warmup: Int = 3
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Text to draw batches from, files and directories as train's --data (default: random bytes).", valueName: "path"))
    var data: [String] = []
    @OptionGroup var parallel: ParallelOptions
    @OptionGroup var precision: PrecisionOptions
    @Flag(help: "Instead, time text generation with and without the KV cache.") var sampling = false
    @Option(name: .customLong("sample-tokens"), help: "Bytes generated per sampling measurement.") var sampleTokens: Int = 256
    @Flag(help: "Instead, time the AdamW update (clip fused) on 1…--threads worker threads against a memory-bandwidth triad; one process.")
    var optimizer = false
    @Flag(help: "Instead, time the gradient collectives alone (blocking and bucketed all-reduce, sharded reduce-scatter and all-gather) on the model's buffer in --bucket-mb buckets: one JSON line each (--steps repetitions after --warmup).")
    var collectives = false
    @Option(name: .customLong("link-gbit"), help: "With --collectives: the link's rate in Gbit/s, to report each collective's share of it.")
    var linkGbit: Double?
    @Option(name: .customLong("fault-slow-rank"), help: ArgumentHelp("Fault injection for tests: this rank sleeps 300 ms before each step, a straggler.", visibility: .hidden))
    var faultSlowRank: Int?

    /// The flags as `train` takes them: the same set-up times the same trainer.
    func request() throws -> TrainingRequest {
        var o = TrainingOptions(model: try model.model())
        o.batch = batch ?? ModelConfig.defaultBatch(forPreset: model.config)
        o.steps = warmup + steps
        o.reduction = try parallel.mode()
        o.microBatch = parallel.microBatch
        var r = TrainingRequest(options: o)
        r.precision = try precision.choice()
        r.threads = parallel.threads
        r.communication = try parallel.communication()
        r.shard = !parallel.noShard
        r.data = data
        return r
    }

    func run() throws {
        if optimizer { return try benchOptimizer() }
        let comm = makeCommunicator(parallel)
        if collectives { return try benchCollectives(comm) }
        let request = agreeOnSetup(comm) { try self.request() }
        let (trainer, threads, precisionReason) = TrainingSetup.benchTrainer(request, comm: comm)
        if sampling {
            if comm.isRoot { try benchSampling(trainer, threads: threads) }
            comm.finalize()
            return
        }
        let o = trainer.options
        if comm.isRoot {
            print("bench \(try model.name()) (\(o.model.summary)), batch \(o.batch) × \(o.model.seqLen), \(comm.size) rank(s) × \(threads) thread(s): \(warmup) warm-up and \(steps) timed steps")
            print(trainer.memorySummary + String(format: "; %.1f MB per rank in all", Double(trainer.memoryPerRank) / 1e6))
        }
        // The ceiling MFU is quoted against: products at the run's precision on all of this rank's cores.
        let peak = PeakCache.peak(o.precision, threads: threads, ranksOnHost: comm.localSize)
        if comm.isRoot {
            let seconds = Double(o.batch * o.model.seqLen) * o.model.flopsPerToken / (peak.gflops * 1e9 * Double(comm.size))
            print(String(format: "at the products' peak a step takes at least %.3f s: the run at least %.0f s", seconds, seconds * Double(warmup + steps)))
        }
        trainer.initialiseParameters()
        let r = StepBench.run(trainer, comm: comm, warmup: warmup, steps: steps, peakGFLOPS: peak.gflops, slowRank: faultSlowRank)
        if let allocations = r.allocations { print(allocations) }
        var context = BenchContext()
        context.config = try model.name(); context.threads = threads; context.ranks = comm.size
        context.precisionReason = precisionReason; context.peakGFLOPS = peak.gflops; context.peakSource = peak.source
        context.gatherPeakMB = Double((comm as? MPICommunicator)?.gatherPeakBytesInFlight ?? 0) / 1e6
        context.gatherMBInFlight = parallel.gatherMBInFlight; context.bucketMB = parallel.bucketMB
        context.communication = request.communication
        comm.finalize()
        if comm.isRoot { try r.lines(trainer, context, steps: steps).forEach { print($0) } }
    }

    private func benchOptimizer() throws {
        let config = try model.model(), threads = parallel.threads ?? ProcessInfo.processInfo.activeProcessorCount
        var rows: [[String: Any]] = []
        for t in 1...threads {
            let r = OptimizerBandwidth.measure(layout: ParameterLayout(config), threads: t, repeats: steps)
            print(String(format: "AdamW %@ (%d parameters), %d thread(s): %.2f GB/s (28 B/parameter), triad %.2f GB/s (12 B/element): %.0f%% of the measured bandwidth",
                         try model.name(), r.parameters, t, r.adamWBytesPerSecond / 1e9, r.triadBytesPerSecond / 1e9, r.share * 100))
            rows.append(["threads": t, "adamw_gbps": (r.adamWBytesPerSecond / 1e7).rounded() / 100,
                         "stream_gbps": (r.triadBytesPerSecond / 1e7).rounded() / 100, "share": (r.share * 1000).rounded() / 1000])
        }
        let json: [String: Any] = ["config": try model.name(), "parameters": ParameterLayout(config).count, "optimizer": rows]
        print(String(decoding: try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]), as: UTF8.self))
    }

    private func benchCollectives(_ comm: Communicator) throws {
        let (config, communication) = agreeOnSetup(comm) { () throws -> (ModelConfig, CommunicationSettings) in
            guard comm.size > 1 else { throw ValidationError("--collectives times communication between ranks, and this is one process; run it under mpirun -np 2 or more") }
            guard steps > 0, warmup >= 0 else { throw ValidationError("--steps must be positive and --warmup not negative for --collectives") }
            if let linkGbit, linkGbit <= 0 { throw ValidationError("--link-gbit is \(linkGbit); give the link's rate in Gbit/s, above 0") }
            return (try model.model(), try parallel.communication())
        }
        let results = CollectiveBench.run(comm: comm, layout: ParameterLayout(config), communication: communication, warmup: warmup, repeats: steps)
        comm.finalize()
        guard comm.isRoot else { return }
        for r in results {
            var json: [String: Any] = [
                "config": try model.name(), "ranks": comm.size, "collective": r.collective, "grad_compression": parallel.gradCompression,
                "bucket_mb": parallel.bucketMB, "buckets": r.bucketBytes.count, "bucket_bytes": r.bucketBytes, "buffer_bytes": r.bufferBytes,
                "wire_bytes": r.wireBytes, "bound_bytes_per_rank": r.boundBytesPerRank.rounded(), "bound": r.bound,
                "median_ms": (r.medianSeconds * 1e6).rounded() / 1000, "ms": r.seconds.map { ($0 * 1e6).rounded() / 1000 },
                "achieved_gbit_s": (r.achievedGbitPerSecond * 1000).rounded() / 1000,
                "poll_us": Int(parallel.progressPollMicroseconds), "gather_mb_in_flight": parallel.gatherMBInFlight,
            ]
            if let linkGbit {
                json["link_gbit"] = linkGbit
                json["share_of_link"] = (r.achievedGbitPerSecond / linkGbit * 1000).rounded() / 1000
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]), as: UTF8.self))
        }
    }

    private func benchSampling(_ trainer: Trainer, threads: Int) throws {
        let config = trainer.options.model, r = try StepBench.sampling(trainer, threads: threads, tokens: sampleTokens)
        print(String(format: "sampling %@ (%@), %d tokens ending at %d of context, %d thread(s): KV cache %.0f tokens/s, full recompute %.0f tokens/s",
                     try model.name(), config.summary, sampleTokens, config.seqLen, threads, r.kvCache, r.noCache))
        let json: [String: Any] = ["config": try model.name(), "threads": threads, "tokens": sampleTokens, "seq_len": config.seqLen,
                                   "kv_cache_tokens_per_s": r.kvCache.rounded(), "no_cache_tokens_per_s": r.noCache.rounded()]
        print(String(decoding: try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]), as: UTF8.self))
    }
}
