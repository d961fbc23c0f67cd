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
    @Flag(help: "Instead, time the AdamW update (clip fused) on 1…--threads worker threads against the same loads and stores without its arithmetic (the memory bandwidth it could reach); one process.")
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
        if optimizer {
            let threads = parallel.threads ?? ProcessInfo.processInfo.activeProcessorCount
            return try OptimizerBandwidth.report(config: try model.name(), layout: ParameterLayout(try model.model()), threads: threads, repeats: steps).forEach { print($0) }
        }
        let comm = parallel.communicator()
        if collectives { return try benchCollectives(comm) }
        let request = agreeOnSetup(comm) { try self.request() }
        let (trainer, threads, precisionReason) = TrainingSetup.benchTrainer(request, comm: comm)
        let config = try model.name()
        if sampling {
            if comm.isRoot { try StepBench.samplingReport(trainer, config: config, threads: threads, tokens: sampleTokens).forEach { print($0) } }
            return comm.finalize()
        }
        if comm.isRoot { StepBench.headerLines(trainer, config: config, ranks: comm.size, threads: threads, warmup: warmup, steps: steps).forEach { print($0) } }
        // The ceiling MFU is quoted against: products at the run's precision on all of this rank's cores.
        let peak = PeakCache.peak(trainer.options.precision, threads: threads, ranksOnHost: comm.localSize)
        if comm.isRoot { print(StepBench.floorLine(trainer, ranks: comm.size, steps: warmup + steps, peakGFLOPS: peak.gflops)) }
        trainer.initialiseParameters()
        let r = StepBench.run(trainer, comm: comm, warmup: warmup, steps: steps, peakGFLOPS: peak.gflops, slowRank: faultSlowRank)
        if let allocations = r.allocations { print(allocations) }
        var context = BenchContext()
        context.config = config; context.threads = threads; context.ranks = comm.size
        context.precisionReason = precisionReason; context.peakGFLOPS = peak.gflops; context.peakSource = peak.source
        context.gatherPeakMB = Double(trainer.strategy.gatherPeakBytesInFlight) / 1e6
        context.gatherMBPerStep = Double(trainer.strategy.gatherBytesPerStep) / 1e6
        context.gatherMBInFlight = parallel.gatherMBInFlight; context.bucketMB = parallel.bucketMB
        context.communication = request.communication
        comm.finalize()
        if comm.isRoot { try r.lines(trainer, context, steps: steps).forEach { print($0) } }
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
        var s = CollectiveBenchSettings()
        s.config = try model.name(); s.ranks = comm.size; s.compression = communication.compression; s.bucketMB = parallel.bucketMB
        s.pollMicroseconds = Int(parallel.progressPollMicroseconds); s.gatherMBInFlight = parallel.gatherMBInFlight; s.linkGbit = linkGbit
        if comm.isRoot { try results.forEach { print(try $0.jsonLine(s)) } }
    }
}
