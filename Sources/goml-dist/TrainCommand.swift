// `goml-dist train`: parses the flags into a TrainingRequest; GomlTrain's TrainingSetup turns
// it into the run on every rank.

import ArgumentParser
import CStopSignal
import Foundation
import GomlComm
import GomlCore
import GomlTrain

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model data-parallel over MPI ranks (or --single in this process).")

    @OptionGroup var model: ModelOptions
    @OptionGroup var optimization: OptimizationOptions
    @OptionGroup var parallel: ParallelOptions
    @OptionGroup var precision: PrecisionOptions
    @OptionGroup var lowCommunication: LowCommunicationOptions

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Training text (bytes are tokens): files and directories (every file below, in sorted path order, hidden names skipped), concatenated. Required; the repository ships data/tinyshakespeare.txt.", valueName: "path"))
    var data: [String] = []
    @Option(name: .customLong("val-data"), parsing: .upToNextOption, help: ArgumentHelp("Validation text, as --data; then all of --data trains (default: the last 10% of --data validates).", valueName: "path"))
    var valData: [String] = []
    @Flag(name: .customLong("allow-data-change"), help: "With --resume: continue even though the corpus differs from the checkpoint's.")
    var allowDataChange = false
    @Option(help: "Output directory: metrics.jsonl and checkpoints.") var out: String = "out"
    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (and at the end).") var evalEvery: Int = 250
    @Option(name: .customLong("eval-batches"), help: "Validation batches (of --batch sequences).") var evalBatches: Int = 50
    @Option(name: .customLong("sample-every"), help: "Print a generated sample every N steps (0: never).") var sampleEvery: Int = 0
    @Option(name: .customLong("log-every"), help: "Print a step line every N steps.") var logEvery: Int = 10
    @Option(name: .customLong("ckpt-every"), help: "Checkpoint every N steps (0: only at the end).") var ckptEvery: Int = 0
    @Option(help: "Checkpoints to keep.") var keep: Int = 3
    @Option(name: .customLong("ckpt-replicas"), help: "Write each checkpoint on this many hosts (the lowest rank on each, into its own --out), so that it outlives a host (default: 2 when the job spans 2 hosts or more, else 1).")
    var ckptReplicas: Int?
    @Option(name: .customLong("failed-at"), help: ArgumentHelp("Set by launch/train on a relaunch: when the previous attempt failed (Unix seconds), for the lost-time report.", valueName: "seconds"))
    var failedAt: Double?
    @Option(name: .customLong("steps-redone"), help: ArgumentHelp("Set by launch/train on a relaunch: steps the previous attempt had done past the checkpoint, for the lost-time report.", valueName: "n"))
    var stepsRedone: Int?
    @Option(help: "Continue from a checkpoint file, or an output directory's latest.") var resume: String?
    @Option(name: .customLong("init-from"), help: ArgumentHelp("Start a new run from a checkpoint's weights (file or output directory): fresh AdamW state and schedule, any --data (fine-tuning).", valueName: "checkpoint"))
    var initFrom: String?
    @Flag(inversion: .prefixedNo, help: "A live progress line (step, loss, tokens/s, ETA) between logged lines; default: on when the output is a terminal.")
    var progress: Bool?
    @Option(name: .customLong("plot-every"), help: "Redraw OUT/loss.svg every N steps (0: only at the end).") var plotEvery: Int = 0
    @Option(name: .customLong("fault-diverge-rank"), help: ArgumentHelp("Make this rank's replica diverge after step 1 (tests the replica checks).", visibility: .hidden))
    var faultDivergeRank: Int?
    @Option(name: .customLong("fault-header-rank"), help: ArgumentHelp("Make this rank report another --fault-header-field in every step's header (tests the header check).", visibility: .hidden))
    var faultHeaderRank: Int?
    @Option(name: .customLong("fault-header-field"), help: ArgumentHelp("options or data: the field --fault-header-rank perturbs.", visibility: .hidden))
    var faultHeaderField: String = HeaderFault.options.rawValue
    @Flag(name: .customLong("fault-gradient-scale"), help: ArgumentHelp("Scale the reduced gradient by the world size (tests the gradient-norm comparisons).", visibility: .hidden))
    var faultGradientScale = false
    @Option(name: .customLong("fault-available-memory-mb"), help: ArgumentHelp("Take this many MB as the host's available memory (tests the header's memory warning).", visibility: .hidden))
    var faultAvailableMemoryMB: Int?
    @Option(name: .customLong("fault-lost-gather-rank"), help: ArgumentHelp("Sharded: this rank starts no parameter all-gather after its first update and stops responding (tests the all-gather's --collective-timeout).", visibility: .hidden))
    var faultLostGatherRank: Int?
    @Option(name: .customLong("stop-after"), help: "Stop after this step with a checkpoint, to be continued with --resume.") var stopAfter: Int?
    @Option(name: .customLong("checksum-every"), help: "Compare a parameter checksum across ranks every N steps.") var checksumEvery: Int = 50

    func validate() throws {
        for (name, value) in [("eval-every", evalEvery), ("sample-every", sampleEvery), ("ckpt-every", ckptEvery), ("checksum-every", checksumEvery), ("plot-every", plotEvery)] where value < 0 {
            throw ValidationError("--\(name) is \(value); it must be ≥ 0")
        }
        if logEvery <= 0 { throw ValidationError("--log-every must be positive") }
        if keep <= 0 { throw ValidationError("--keep must be positive") }
        if let ckptReplicas, ckptReplicas <= 0 { throw ValidationError("--ckpt-replicas must be positive") }
        if let t = parallel.threads, t <= 0 { throw ValidationError("--threads must be positive") }
        if HeaderFault(rawValue: faultHeaderField) == nil { throw ValidationError("unknown --fault-header-field '\(faultHeaderField)': use options or data") }
    }

    func options() throws -> TrainingOptions {
        var o = TrainingOptions(model: try model.model())
        try optimization.apply(to: &o, preset: model.config)
        o.evalEvery = evalEvery; o.evalBatches = evalBatches; o.sampleEvery = sampleEvery
        o.logEvery = logEvery; o.ckptEvery = ckptEvery; o.keep = keep; o.checksumEvery = checksumEvery
        return o
    }

    func request() throws -> TrainingRequest {
        var r = TrainingRequest(options: try options())
        r.precision = try precision.choice()
        r.threads = parallel.threads
        r.communication = try parallel.communication()
        r.shard = !parallel.noShard
        r.lowCommunication = try lowCommunication.request()
        r.data = data; r.validationData = valData; r.allowDataChange = allowDataChange
        r.out = out; r.ckptReplicas = ckptReplicas; r.resume = resume; r.initFrom = initFrom; r.stopAfter = stopAfter
        r.progress = progress; r.plotEvery = plotEvery; r.failedAt = failedAt; r.stepsRedone = stepsRedone
        r.stopSignal = { goml_stop_signal_received() }
        r.faults.divergeRank = faultDivergeRank
        r.faults.header = faultHeaderRank.map { ($0, HeaderFault(rawValue: faultHeaderField)!) }
        r.faults.gradientScale = faultGradientScale
        r.faults.availableMemoryMB = faultAvailableMemoryMB
        r.faults.lostGatherRank = faultLostGatherRank
        lowCommunication.addFaults(to: &r.faults)
        return r
    }

    func run() throws {
        // Before MPI's set-up, so that a stop request during start-up does not kill the rank
        // (SIGUSR1's default), and again after it, so that ours stays the handler.
        _ = goml_stop_signal_install()
        let comm = makeCommunicator(parallel)
        _ = goml_stop_signal_install()
        let request = agreeOnSetup(comm) { try self.request() }
        let training = TrainingSetup.run(request, comm: comm)
        do {
            try training.run()
        } catch let failure as RunFailure {
            if comm.isRoot && !failure.message.isEmpty { FileHandle.standardError.write(Data("goml-dist: error: \(failure.message)\n".utf8)) }
            comm.finalize()
            throw ExitCode(failure.code)
        }
        comm.finalize()
    }
}
