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
        abstract: "Train a model data-parallel over MPI ranks (or --single in this process).",
        discussion: "Expert options (AdamW's betas and weight decay, bucket size, timeouts, checkpoint replicas, ...) and those the tests use: goml-dist train --help-hidden. Low-communication training: docs/low-communication.md.")

    @OptionGroup(title: "Model") var model: ModelOptions
    @OptionGroup(title: "Data") var data: DataOptions
    @OptionGroup(title: "Optimization") var optimization: OptimizationOptions
    @OptionGroup(title: "Parallelism") var parallel: ParallelOptions
    @OptionGroup(title: "Low-communication training") var lowCommunication: LowCommunicationOptions
    @OptionGroup(title: "Precision") var precision: PrecisionOptions
    @OptionGroup(title: "Checkpoints") var checkpoints: CheckpointOptions
    @OptionGroup(title: "Logging") var logging: LoggingOptions
    @OptionGroup(visibility: .hidden) var faults: FaultOptions

    func validate() throws {
        if let t = parallel.threads, t <= 0 { throw ValidationError("--threads must be positive") }
    }

    func options() throws -> TrainingOptions {
        var o = TrainingOptions(model: try model.model())
        optimization.apply(to: &o, preset: model.config)
        o.reduction = try parallel.mode()
        o.microBatch = parallel.microBatch
        o.evalEvery = logging.evalEvery; o.evalBatches = logging.evalBatches; o.sampleEvery = logging.sampleEvery
        o.logEvery = logging.logEvery; o.ckptEvery = checkpoints.ckptEvery; o.keep = checkpoints.keep; o.checksumEvery = logging.checksumEvery
        return o
    }

    func request() throws -> TrainingRequest {
        var r = TrainingRequest(options: try options())
        r.precision = try precision.choice()
        r.threads = parallel.threads
        r.communication = try parallel.communication()
        r.shard = !parallel.noShard
        r.lowCommunication = try lowCommunication.request()
        r.data = data.data; r.validationData = data.valData; r.allowDataChange = data.allowDataChange
        let c = checkpoints
        r.out = c.out; r.ckptReplicas = c.ckptReplicas; r.resume = c.resume; r.initFrom = c.initFrom; r.stopAfter = c.stopAfter
        r.failedAt = c.failedAt; r.stepsRedone = c.stepsRedone
        r.progress = logging.progress; r.plotEvery = logging.plotEvery
        r.stopSignal = { goml_stop_signal_received() }
        r.stopSignalSender = { goml_stop_signal_sender() }
        faults.add(to: &r.faults)
        lowCommunication.addFaults(to: &r.faults)
        return r
    }

    func run() throws {
        // Before MPI's set-up, so that a stop request during start-up does not kill the rank
        // (SIGUSR1's default), and again after it, so that ours stays the handler.
        _ = goml_stop_signal_install()
        let comm = parallel.communicator()
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

struct DataOptions: ParsableArguments {
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Training text (bytes are tokens): files and directories (every file below, in sorted path order, hidden names skipped), concatenated. Required; the repository ships data/tinyshakespeare.txt.", valueName: "path"))
    var data: [String] = []
    @Option(name: .customLong("val-data"), parsing: .upToNextOption, help: ArgumentHelp("Validation text, as --data; then all of --data trains (default: the last 10% of --data validates).", valueName: "path"))
    var valData: [String] = []
    @Flag(name: .customLong("allow-data-change"), help: "With --resume: continue even though the corpus differs from the checkpoint's.")
    var allowDataChange = false
}

struct CheckpointOptions: ParsableArguments {
    @Option(help: "Output directory: metrics.jsonl, checkpoints, loss.svg.") var out: String = "out"
    @Option(name: .customLong("ckpt-every"), help: "Checkpoint every N steps (0: at the end, and on a stop signal).") var ckptEvery: Int = 0
    @Option(help: "Checkpoints to keep.") var keep: Int = 3
    @Option(name: .customLong("ckpt-replicas"), help: ArgumentHelp("Write each checkpoint on this many hosts (the lowest rank on each, into its own --out), so that it outlives a host (default: 2 when the job spans 2 hosts or more, else 1).", visibility: .hidden))
    var ckptReplicas: Int?
    @Option(help: ArgumentHelp("Continue from a checkpoint file, or an output directory's latest.", valueName: "checkpoint")) var resume: String?
    @Option(name: .customLong("init-from"), help: ArgumentHelp("Start a new run from a checkpoint's weights (file or output directory): fresh AdamW state and schedule, any --data (fine-tuning).", valueName: "checkpoint"))
    var initFrom: String?
    @Option(name: .customLong("stop-after"), help: ArgumentHelp("Stop after this step with a checkpoint, to be continued with --resume.", visibility: .hidden)) var stopAfter: Int?
    @Option(name: .customLong("failed-at"), help: ArgumentHelp("Set by launch/train on a relaunch: when the previous attempt failed (Unix seconds), for the lost-time report.", valueName: "seconds", visibility: .hidden))
    var failedAt: Double?
    @Option(name: .customLong("steps-redone"), help: ArgumentHelp("Set by launch/train on a relaunch: steps the previous attempt had done past the checkpoint, for the lost-time report.", valueName: "n", visibility: .hidden))
    var stepsRedone: Int?

    func validate() throws {
        if ckptEvery < 0 { throw ValidationError("--ckpt-every is \(ckptEvery); it must be ≥ 0") }
        if keep <= 0 { throw ValidationError("--keep must be positive") }
        if let ckptReplicas, ckptReplicas <= 0 { throw ValidationError("--ckpt-replicas must be positive") }
    }
}

struct LoggingOptions: ParsableArguments {
    @Option(name: .customLong("log-every"), help: "Print a step line every N steps.") var logEvery: Int = 10
    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (and at the end).") var evalEvery: Int = 250
    @Option(name: .customLong("eval-batches"), help: ArgumentHelp("Validation batches (of --batch sequences).", visibility: .hidden)) var evalBatches: Int = 50
    @Option(name: .customLong("sample-every"), help: "Print a generated sample every N steps (0: never).") var sampleEvery: Int = 0
    @Flag(inversion: .prefixedNo, help: "A live progress line (step, loss, tokens/s, ETA) between logged lines (default: on when the output is a terminal).")
    var progress: Bool?
    @Option(name: .customLong("plot-every"), help: "Redraw OUT/loss.svg every N steps (0: only at the end).") var plotEvery: Int = 0
    @Option(name: .customLong("checksum-every"), help: ArgumentHelp("Compare a parameter checksum across ranks every N steps.", visibility: .hidden)) var checksumEvery: Int = 50

    func validate() throws {
        for (name, value) in [("eval-every", evalEvery), ("sample-every", sampleEvery), ("checksum-every", checksumEvery), ("plot-every", plotEvery)] where value < 0 {
            throw ValidationError("--\(name) is \(value); it must be ≥ 0")
        }
        if logEvery <= 0 { throw ValidationError("--log-every must be positive") }
    }
}

/// Faults the tests inject (hidden).
struct FaultOptions: ParsableArguments {
    @Option(name: .customLong("fault-diverge-rank"), help: "Make this rank's replica diverge after step 1 (tests the replica checks).")
    var divergeRank: Int?
    @Option(name: .customLong("fault-header-rank"), help: "Make this rank report another --fault-header-field in every step's header (tests the header check).")
    var headerRank: Int?
    @Option(name: .customLong("fault-header-field"), help: "options or data: the field --fault-header-rank perturbs.")
    var headerField: String = HeaderFault.options.rawValue
    @Flag(name: .customLong("fault-gradient-scale"), help: "Scale the reduced gradient by the world size (tests the gradient-norm comparisons).")
    var gradientScale = false
    @Option(name: .customLong("fault-available-memory-mb"), help: "Take this many MB as the host's available memory (tests the header's memory warning).")
    var availableMemoryMB: Int?
    @Option(name: .customLong("fault-lost-gather-rank"), help: "Sharded: this rank starts no parameter all-gather after its first update and stops responding (tests the all-gather's --collective-timeout).")
    var lostGatherRank: Int?

    func validate() throws {
        if HeaderFault(rawValue: headerField) == nil { throw ValidationError("unknown --fault-header-field '\(headerField)': use options or data") }
    }

    func add(to faults: inout FaultInjection) {
        faults.divergeRank = divergeRank
        faults.header = headerRank.map { ($0, HeaderFault(rawValue: headerField)!) }
        faults.gradientScale = gradientScale
        faults.availableMemoryMB = availableMemoryMB
        faults.lostGatherRank = lostGatherRank
    }
}
