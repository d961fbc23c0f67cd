// `goml-dist train`: parses the options, checks them on every rank, and hands over to
// GomlTrain's TrainingRun. Every rank runs this; rank 0 alone reads a resumed checkpoint.

import ArgumentParser
import CStopSignal
import Foundation
import GomlCore
import GomlIO
import GomlTrain

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model data-parallel over MPI ranks (or --single in this process).")

    @OptionGroup var model: ModelOptions
    @OptionGroup var optimization: OptimizationOptions
    @OptionGroup var parallel: ParallelOptions
    @OptionGroup var precision: PrecisionOptions

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
    @Option(help: "Continue from a checkpoint file, or an output directory's latest.") var resume: String?
    @Flag(inversion: .prefixedNo, help: "A live progress line (step, loss, tokens/s, ETA) between logged lines; default: on when the output is a terminal.")
    var progress: Bool?
    @Option(name: .customLong("plot-every"), help: "Redraw OUT/loss.svg every N steps (0: only at the end).") var plotEvery: Int = 0
    @Option(name: .customLong("fault-diverge-rank"), help: ArgumentHelp("Make this rank's replica diverge after step 1 (tests the replica checks).", visibility: .hidden))
    var faultDivergeRank: Int?
    @Flag(name: .customLong("fault-gradient-scale"), help: ArgumentHelp("Scale the reduced gradient by the world size (tests the gradient-norm comparisons).", visibility: .hidden))
    var faultGradientScale = false
    @Option(name: .customLong("stop-after"), help: "Stop after this step with a checkpoint, to be continued with --resume.") var stopAfter: Int?
    @Option(name: .customLong("checksum-every"), help: "Compare a parameter checksum across ranks every N steps.") var checksumEvery: Int = 50

    func validate() throws {
        for (name, value) in [("eval-every", evalEvery), ("sample-every", sampleEvery), ("ckpt-every", ckptEvery), ("checksum-every", checksumEvery), ("plot-every", plotEvery)] where value < 0 {
            throw ValidationError("--\(name) is \(value); it must be ≥ 0")
        }
        if logEvery <= 0 { throw ValidationError("--log-every must be positive") }
        if keep <= 0 { throw ValidationError("--keep must be positive") }
        if let t = parallel.threads, t <= 0 { throw ValidationError("--threads must be positive") }
    }

    func options() throws -> TrainingOptions {
        var o = TrainingOptions(model: try model.model())
        try optimization.apply(to: &o, preset: model.config)
        o.evalEvery = evalEvery; o.evalBatches = evalBatches; o.sampleEvery = sampleEvery
        o.logEvery = logEvery; o.ckptEvery = ckptEvery; o.keep = keep; o.checksumEvery = checksumEvery
        return o
    }

    /// The checkpoint to resume from, refused when it cannot continue this run unchanged.
    func checkedCheckpoint(_ path: String, options: TrainingOptions, data: RunData) throws -> TrainingCheckpoint {
        let ckpt = try Checkpoint.loadTraining(try Checkpoint.resolve(path))
        if let saved = ckpt.dataFingerprint, saved != data.identity {
            let change = "checkpoint \(ckpt.path) was trained on data with fingerprint \(saved), but this run's is \(data.identity)"
            guard allowDataChange else {
                throw ConfigError("\(change); pass the original --data (and --val-data), or --allow-data-change to continue on this corpus")
            }
            FileHandle.standardError.write(Data("goml-dist: warning: \(change); continuing (--allow-data-change)\n".utf8))
        }
        if ckpt.config != options.model {
            throw ConfigError("checkpoint \(ckpt.path) holds model \(ckpt.config.summary) but the options ask for \(options.model.summary); pass the same --config/overrides as the original run")
        }
        if let saved = try? JSONDecoder().decode(TrainingOptions.self, from: Data(ckpt.optionsJSON.utf8)),
           case let diffs = options.sameTrajectory(as: saved), !diffs.isEmpty {
            throw ConfigError("resuming \(ckpt.path) with different options (\(diffs.joined(separator: "; "))); pass the original run's options")
        }
        if ckpt.step >= options.steps {
            throw ConfigError("checkpoint \(ckpt.path) is at step \(ckpt.step), not before --steps \(options.steps); raise --steps to continue")
        }
        return ckpt
    }

    func run() throws {
        // Before MPI's set-up, so that a stop request during start-up does not kill the rank
        // (SIGUSR1's default), and again after it, so that ours stays the handler.
        _ = goml_stop_signal_install()
        let comm = makeCommunicator(parallel)
        _ = goml_stop_signal_install()
        let threads = coresPerRank(parallel, comm, exact: optimization.reduction == ReductionMode.exact.rawValue)
        let (trainer, settings, corpus) = agreeOnSetup(comm) { () throws -> (Trainer, RunSettings, RunData) in
            var settings = RunSettings()
            var options = try self.options()
            (options.precision, settings.precisionReason) = try precision.resolve(exact: options.reduction == .exact)
            settings.outDirectory = out
            settings.threads = threads
            settings.stopAfter = stopAfter
            settings.progress = progress
            settings.plotEvery = plotEvery
            settings.divergingRank = faultDivergeRank
            settings.stopSignal = { goml_stop_signal_received() }
            settings.allocation = slurmAllocation()
            let corpus = try openData(data, validation: valData)
            settings.dataName = corpus.description
            settings.dataFingerprint = corpus.identity
            if let resume {
                settings.resume = true
                // Rank 0 reads and checks the checkpoint, then broadcasts it: other hosts need not see OUT.
                if comm.isRoot { settings.resumeFrom = try checkedCheckpoint(resume, options: options, data: corpus) }
            }
            let communication = try parallel.communication(reduction: optimization.reduction)
            settings.communication = communication
            let trainer = try Trainer(options: options, comm: comm, split: corpus.split, workers: threads,
                                      communication: communication)
            trainer.faultGradientScale = faultGradientScale
            return (trainer, settings, corpus)
        }
        agreeOnData(comm, corpus)
        var run = settings
        // The ceiling MFU is quoted against: sgemm on all of this rank's cores (rank 0 measures).
        BLAS.setThreads(threads)
        if comm.isRoot { run.peakGFLOPS = BLAS.measureSgemmGFLOPS(size: 512, repeats: 4) }
        configureBLAS(cores: threads, trainer: trainer)
        let training = agreeOnSetup(comm) { try TrainingRun(trainer: trainer, settings: run) }
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
