// `goml-dist train`: parses the options, checks them on every rank, and hands over to
// GomlTrain's TrainingRun. Every rank runs this; on a resume the lowest rank on each host
// looks for its newest intact checkpoint, and the newest of all is broadcast.

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

    func run() throws {
        // Before MPI's set-up, so that a stop request during start-up does not kill the rank
        // (SIGUSR1's default), and again after it, so that ours stays the handler.
        _ = goml_stop_signal_install()
        let comm = makeCommunicator(parallel)
        _ = goml_stop_signal_install()
        let hosts = RankHosts.gather(comm)
        var local = LocalResumeCandidate()
        let threads = coresPerRank(parallel, comm, reduction: try? optimization.mode())
        // Before any rank's buffers exist, which MemAvailable would otherwise already exclude.
        let available = faultAvailableMemoryMB.map { $0 * 1_000_000 } ?? availableMemory()
        // DiLoCo: the workers, then (collective, on every rank) their communicators.
        let (baseOptions, group) = agreeOnSetup(comm) { () throws -> (TrainingOptions, WorkerGroup) in
            var options = try self.options()
            guard lowCommunication.active else { return (options, .whole) }
            let group = try WorkerGroup.plan(hosts: hosts, rank: comm.rank, workerSize: lowCommunication.workerSize,
                                             workersPerHost: lowCommunication.workersPerHost)
            if let ckptReplicas, ckptReplicas > 1 {
                throw ValidationError("--ckpt-replicas \(ckptReplicas) with low-communication training: rank 0 alone writes its checkpoint (it gathers every worker's state); drop --ckpt-replicas")
            }
            options.outer = try lowCommunication.outer(workers: group.count)
            options.optimizer.gradClip = options.outer!.workerGradClip(options.optimizer.gradClip)
            try options.validate(worldSize: comm.size)
            return (options, group)
        }
        let workerComm = baseOptions.outer == nil ? comm : comm.split(color: group.index)
        let peers = baseOptions.outer == nil ? nil : comm.split(color: workerComm.rank)
        let (trainer, settings, corpus) = agreeOnSetup(comm) { () throws -> (Trainer, RunSettings, RunData) in
            var settings = RunSettings()
            var options = baseOptions
            options.reduction = parallel.reduction(options.reduction, worldSize: workerComm.size)
            (options.precision, settings.precisionReason) = try precision.resolve(float32Reason: options.reduction.strategy.float32Reason)
            settings.outDirectory = out
            settings.threads = threads
            settings.stopAfter = stopAfter
            settings.progress = progress
            settings.plotEvery = plotEvery
            settings.divergingRank = faultDivergeRank
            settings.headerFault = faultHeaderRank.map { ($0, HeaderFault(rawValue: faultHeaderField)!) }
            settings.stopSignal = { goml_stop_signal_received() }
            settings.allocation = slurmAllocation()
            settings.availableMemory = available
            let corpus = try openData(data, validation: valData)
            settings.dataName = corpus.description
            settings.dataFingerprint = corpus.identity
            settings.hosts = hosts
            // A low-communication checkpoint is gathered to rank 0, which alone writes it.
            settings.replicaWriters = options.outer == nil ? hosts.replicaWriters(ckptReplicas) : [0]
            settings.failedAt = failedAt
            settings.stepsRedone = stepsRedone
            if let resume {
                settings.resume = true
                // The lowest rank on each host reads its own disk: no host need see another's OUT.
                if hosts.leaders.contains(comm.rank) {
                    local = try newestResumableCheckpoint(resume, options: options, dataIdentity: corpus.identity,
                                                          allowDataChange: allowDataChange)
                }
            }
            let communication = try parallel.communication()
            let trainer = try Trainer(options: options, comm: workerComm, split: corpus.split, workers: threads,
                                      communication: communication, group: group)
            trainer.faultGradientScale = faultGradientScale
            (trainer.strategy as? ShardedAllReduce)?.faultLostDuringGather = faultLostGatherRank == comm.rank
            if lowCommunication.faultSameData { trainer.sampler.rng = Xoshiro256(seed: options.seed) }
            return (trainer, settings, corpus)
        }
        agreeOnData(comm, corpus)
        var run = settings
        if let resume {
            let source = agreeOnResumeSource(comm, hosts: hosts, path: resume, local: local)
            run.resumeSource = source
            run.resumeFrom = comm.rank == source.root ? local.checkpoint : nil
            local = LocalResumeCandidate()   // other hosts' copies are not needed
        }
        // The ceiling MFU is quoted against: products at the run's precision on all of this
        // rank's cores (rank 0 measures).
        if comm.isRoot { run.peakGFLOPS = ProductPeak.measure(trainer.options.precision, threads: threads, size: 512, repeats: 4) }
        configureBLAS(trainer)
        let outer = trainer.options.outer.map { options in
            let outer = OuterSync(options: options, world: comm, worker: workerComm, peers: peers!, group: group, trainer: trainer)
            outer.faultNoRestart = lowCommunication.faultNoRestart
            outer.faultLostDuringOuterSum = lowCommunication.faultLostRank == comm.rank
            return outer
        }
        let training = agreeOnSetup(comm) { try TrainingRun(trainer: trainer, settings: run, outer: outer) }
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
