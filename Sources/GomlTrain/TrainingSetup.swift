// TrainingSetup: the one place a request (the parsed flags, as plain values) becomes a running
// job: precision, strategy, cores, DiLoCo's workers and communicators, checkpoint replicas,
// the checkpoint to resume, and every rank's agreement on all of it. `train` and `bench` both
// come here; the executable only parses flags into a TrainingRequest and prints.

import Foundation
import GomlComm
import GomlCore
import GomlIO

/// What the user asked for: the flags of `train` (and the part of them `bench` takes).
public struct TrainingRequest {
    /// Model, optimisation and logging; `reduction` as requested (allreduce or exact).
    public var options: TrainingOptions
    public var precision = PrecisionChoice.auto
    /// Cores per rank (nil: --cpus-per-task under Slurm, else the host's cores / its ranks).
    public var threads: Int? = nil
    public var communication = CommunicationSettings()
    /// Several ranks of a synchronous allreduce shard the optimizer state (false: --no-shard).
    public var shard = true
    public var lowCommunication = LowCommunicationRequest()
    public var data: [String] = [], validationData: [String] = []
    public var allowDataChange = false
    public var out = "out"
    public var ckptReplicas: Int? = nil
    public var resume: String? = nil
    /// Start a new run (fresh optimizer and schedule, any data) from this checkpoint's weights.
    public var initFrom: String? = nil
    public var stopAfter: Int? = nil
    public var progress: Bool? = nil
    public var plotEvery = 0
    /// Set by launch/train on a relaunch (the lost-time report).
    public var failedAt: Double? = nil, stepsRedone: Int? = nil
    /// The product rate MFU is quoted against (nil: rank 0 reads or measures it, PeakCache).
    public var peakGFLOPS: Double? = nil
    /// Polled before every step: the signal that asked this rank to stop, 0 when none.
    public var stopSignal: () -> Int32 = { 0 }
    /// The process that sent that signal (0: unknown).
    public var stopSignalSender: () -> Int32 = { 0 }
    public var faults = FaultInjection()

    public init(options: TrainingOptions) { self.options = options }
}

/// DiLoCo's flags; inactive (synchronous training) unless one of them asks for it.
public struct LowCommunicationRequest: Sendable {
    public var syncEvery = 1
    public var lr = 1.0, momentum = 0.0
    public var compression = GradientCompression.none
    public var overlapped = false
    public var workersPerHost: Int? = nil, workerSize: Int? = nil
    public init() {}

    public var active: Bool { syncEvery != 1 || workersPerHost != nil || workerSize != nil }
}

/// Faults the tests inject (hidden flags); none by default.
public struct FaultInjection: Sendable {
    public var divergeRank: Int? = nil
    public var header: (rank: Int, field: HeaderFault)? = nil
    public var gradientScale = false
    public var availableMemoryMB: Int? = nil
    public var lostGatherRank: Int? = nil
    public var outerNoRestart = false
    public var lostOuterRank: Int? = nil
    public var outerSameData = false
    public init() {}
}

/// `--precision`: what the user asked for; `resolve` decides what runs.
public enum PrecisionChoice: String, CaseIterable, Sendable {
    case auto, bf16, fp32

    /// `auto` runs bf16 only where its products are at least this much faster than float32's:
    /// native bf16 dot products are not faster on every CPU (on an Intel Xeon family 6 model
    /// 207 without AMX they ran at half OpenBLAS's AVX-512 sgemm; on Zen 4 and 5 at twice it).
    public static let bf16Margin = 1.3

    /// bf16 products' rate over float32's on `threads` cores of this CPU (PeakCache: measured
    /// once per CPU, precision and thread count).
    public static func measuredBF16Speedup(threads: Int, ranksOnHost: Int = 1) -> Double {
        PeakCache.peak(.bf16, threads: threads, ranksOnHost: ranksOnHost).gflops / PeakCache.peak(.fp32, threads: threads, ranksOnHost: ranksOnHost).gflops
    }

    /// The precision to run and why (for the run header); throws when bf16 cannot run here.
    /// `float32Reason`: why the run's strategy needs float32, if it does. `bf16Speedup`: for
    /// `auto` on a CPU with native bf16, bf16 products' rate over float32's (every rank must
    /// pass the same: set-up takes the ranks' least).
    public func resolve(float32Reason: String? = nil, bf16Speedup: @autoclosure () -> Double = measuredBF16Speedup(threads: 1)) throws -> (precision: Precision, reason: String) {
        let isa = OneDNN.isaName
        switch self {
        case .fp32: return (.fp32, "requested")
        case .bf16:
            guard OneDNN.hasBF16Products else {
                throw ConfigError("--precision bf16 needs AVX-512 (native bfloat16 dot products, AVX512_BF16 or AMX, or their emulation), but oneDNN reports \(isa) on this CPU; use --precision fp32 or auto")
            }
            // bf16 under a float32-only reduction is refused by the strategy's validate, with the fix.
            return OneDNN.hasNativeBF16 ? (.bf16, "requested; oneDNN on \(isa)")
                : (.bf16, "requested; emulated: oneDNN reports \(isa), no native bf16 dot products, so slower than fp32")
        case .auto:
            if let float32Reason { return (.fp32, "auto: \(float32Reason)") }
            guard OneDNN.hasNativeBF16 else { return (.fp32, "auto: oneDNN reports \(isa), no native bf16 dot products") }
            let speedup = bf16Speedup()
            return speedup >= Self.bf16Margin
                ? (.bf16, String(format: "auto: oneDNN reports %@; bf16 products run %.2f× float32's here", isa, speedup))
                : (.fp32, String(format: "auto: oneDNN reports %@, but bf16 products run only %.2f× float32's here (bf16 needs %.1f×)", isa, speedup, Self.bf16Margin))
        }
    }
}

public enum TrainingSetup {
    /// Collective over `comm`: checks the request on every rank and builds the run, or ends
    /// every rank together with one message (SetupAgreement). `comm` spans the whole job.
    public static func run(_ request: TrainingRequest, comm: Communicator) -> TrainingRun {
        let request = paced(request, comm)
        let hosts = RankHosts.gather(comm)
        let threads = coresPerRank(request, comm)
        // Before any rank's buffers exist, which MemAvailable would otherwise already exclude.
        let available = request.faults.availableMemoryMB.map { $0 * 1_000_000 } ?? availableMemory()
        let (baseOptions, group) = agreeOnSetup(comm) { try workers(request, hosts: hosts, rank: comm.rank, worldSize: comm.size) }
        // DiLoCo: every rank's worker, and the peers at its place in every worker (collective).
        let workerComm = baseOptions.outer == nil ? comm : comm.split(color: group.index)
        let peers = baseOptions.outer == nil ? nil : comm.split(color: workerComm.rank)
        var local = LocalResumeCandidate()
        let speedup = bf16Speedup(request, comm, threads: threads)
        let (trainer, settings, corpus) = agreeOnSetup(comm) { () throws -> (Trainer, RunSettings, RunData) in
            var settings = RunSettings()
            var options = baseOptions
            options.reduction = reduction(request, options.reduction, worldSize: workerComm.size)
            (options.precision, settings.precisionReason) = try request.precision.resolve(float32Reason: options.reduction.strategy.float32Reason, bf16Speedup: speedup)
            settings.outDirectory = request.out
            settings.threads = threads
            settings.stopAfter = request.stopAfter
            settings.progress = request.progress
            settings.plotEvery = request.plotEvery
            settings.divergingRank = request.faults.divergeRank
            settings.headerFault = request.faults.header
            settings.stopSignal = request.stopSignal
            settings.stopSignalSender = request.stopSignalSender
            settings.allocation = slurmAllocation()
            settings.availableMemory = available
            let corpus = try openData(request.data, validation: request.validationData)
            settings.dataName = corpus.description
            settings.dataFingerprint = corpus.identity
            settings.hosts = hosts
            // A low-communication checkpoint is gathered to rank 0, which alone writes it.
            settings.replicaWriters = options.outer == nil ? hosts.replicaWriters(request.ckptReplicas) : [0]
            settings.failedAt = request.failedAt
            settings.stepsRedone = request.stepsRedone
            if let path = request.initFrom {
                guard request.resume == nil else {
                    throw ConfigError("--init-from starts a new run from a checkpoint's weights and --resume continues one; pass one of them")
                }
                settings.initFrom = comm.isRoot ? try initialWeights(path, model: options.model) : ("", nil)
            }
            if let resume = request.resume {
                settings.resume = true
                // The lowest rank on each host reads its own disk: no host need see another's OUT.
                if hosts.leaders.contains(comm.rank) {
                    local = try newestResumableCheckpoint(resume, options: options, dataIdentity: corpus.identity,
                                                          allowDataChange: request.allowDataChange)
                }
            }
            // DiLoCo's Δ reads every parameter as float32: a sharded worker gathers them so.
            var communication = request.communication
            if options.outer != nil { communication.bf16Weights = false }
            communication.faultLostDuringGather = request.faults.lostGatherRank == comm.rank
            let trainer = try Trainer(options: options, comm: workerComm, split: corpus.split, workers: threads,
                                      communication: communication, group: group)
            trainer.faultGradientScale = request.faults.gradientScale
            if request.faults.outerSameData { trainer.sampler.rng = Xoshiro256(seed: options.seed) }
            return (trainer, settings, corpus)
        }
        agreeOnData(comm, corpus)
        var run = settings
        if let resume = request.resume {
            let source = agreeOnResumeSource(comm, hosts: hosts, path: resume, local: local)
            run.resumeSource = source
            run.resumeFrom = comm.rank == source.root ? local.checkpoint : nil
        }
        // The ceiling MFU is quoted against: products at the run's precision on all of this
        // rank's cores (rank 0 measures).
        if let peak = request.peakGFLOPS {
            (run.peakGFLOPS, run.peakSource) = (peak, "given")
        } else if comm.isRoot {
            let peak = PeakCache.peak(trainer.options.precision, threads: threads, ranksOnHost: comm.localSize)
            (run.peakGFLOPS, run.peakSource) = (peak.gflops, peak.source)
        }
        BLAS.setThreads(trainer.blasThreads)
        let mode: RunMode = trainer.options.outer.map { options in
            let outer = OuterSync(options: options, world: comm, worker: workerComm, peers: peers!, group: group, trainer: trainer,
                                  pacing: request.communication.pacing)
            outer.faultNoRestart = request.faults.outerNoRestart
            outer.faultLostDuringOuterSum = request.faults.lostOuterRank == comm.rank
            return outer
        } ?? SynchronousRun(trainer: trainer)
        return agreeOnSetup(comm) { try TrainingRun(trainer: trainer, settings: run, mode: mode) }
    }

    /// The request with its reducers' pacing set for this job: a waiting thread's core is idle
    /// only when every rank on the host has a core of its own.
    static func paced(_ request: TrainingRequest, _ comm: Communicator) -> TrainingRequest {
        var paced = request
        paced.communication.pacing.ranksHaveOwnCores = comm.localSize <= ProcessInfo.processInfo.activeProcessorCount
        return paced
    }

    /// `auto`'s bf16 speedup, the same on every rank (collective): each rank measures it on its
    /// cores where the CPU has native bf16, and the least counts (0 elsewhere, or where `auto`
    /// does not ask: another precision requested, or a strategy that runs float32 only; sharding,
    /// decided later, has no such reason).
    static func bf16Speedup(_ request: TrainingRequest, _ comm: Communicator, threads: Int) -> Double {
        guard request.precision == .auto, request.options.reduction.strategy.float32Reason == nil else { return 0 }
        let mine = [OneDNN.hasNativeBF16 ? PrecisionChoice.measuredBF16Speedup(threads: threads, ranksOnHost: comm.localSize) : 0]
        var all = [Double](repeating: 0, count: comm.size)
        mine.withUnsafeBufferPointer { m in all.withUnsafeMutableBufferPointer { comm.allGather(m, into: $0) } }
        return all.min()!
    }

    /// Collective over `comm`: the trainer `bench` times, on `--data` (or random bytes), set up
    /// as `train` would set it up for a synchronous run, and why its precision was chosen.
    public static func benchTrainer(_ request: TrainingRequest, comm: Communicator)
        -> (trainer: Trainer, threads: Int, precisionReason: String) {
        let request = paced(request, comm)
        let threads = coresPerRank(request, comm)
        var reason = ""
        let speedup = bf16Speedup(request, comm, threads: threads)
        let (trainer, corpus) = agreeOnSetup(comm) { () throws -> (Trainer, RunData?) in
            var options = request.options
            options.reduction = reduction(request, options.reduction, worldSize: comm.size)
            (options.precision, reason) = try request.precision.resolve(float32Reason: options.reduction.strategy.float32Reason, bf16Speedup: speedup)
            let corpus = request.data.isEmpty ? nil : try openData(request.data, validation: [])
            var rng = Xoshiro256(seed: 99)
            let split = corpus?.split ?? TextSplit(bytes: (0..<200_000).map { _ in UInt8(rng.nextBelow(256)) })
            return (try Trainer(options: options, comm: comm, split: split, workers: threads, communication: request.communication), corpus)
        }
        if let corpus { agreeOnData(comm, corpus) }
        BLAS.setThreads(trainer.blasThreads)
        return (trainer, threads, reason)
    }

    /// Rank 0's read of --init-from: the checkpoint's weights, which must be of the run's model.
    static func initialWeights(_ path: String, model: ModelConfig) throws -> (description: String, params: [Float]?) {
        let file = try Checkpoint.resolve(path)
        let saved = try Checkpoint.loadModel(file)
        guard saved.config == model else {
            throw ConfigError("--init-from \(file) holds model \(saved.config.summary) but this run asks for \(model.summary); pass the same --config and overrides as its run")
        }
        return ("\(file) (step \(saved.step) of its run)", saved.params)
    }

    /// The strategy to run: allreduce on several ranks is sharded unless --no-shard (measured
    /// faster: docs/multihost-bench.md), or unless an all-reduce-only option asks for it.
    static func reduction(_ request: TrainingRequest, _ requested: ReductionMode, worldSize: Int) -> ReductionMode {
        requested == .allReduce && worldSize > 1 && request.shard && !request.communication.hierarchical ? .sharded : requested
    }

    /// The options with DiLoCo's settings, and this rank's worker (the whole job when synchronous).
    static func workers(_ request: TrainingRequest, hosts: RankHosts, rank: Int, worldSize: Int) throws -> (TrainingOptions, WorkerGroup) {
        var options = request.options
        let x = request.lowCommunication
        guard x.active else { return (options, .whole) }
        if x.workersPerHost != nil && x.workerSize != nil { throw ConfigError("--workers-per-host and --worker-size both say how to group ranks; pass one") }
        let group = try WorkerGroup.plan(hosts: hosts, rank: rank, workerSize: x.workerSize, workersPerHost: x.workersPerHost)
        if let replicas = request.ckptReplicas, replicas > 1 {
            throw ConfigError("--ckpt-replicas \(replicas) with low-communication training: rank 0 alone writes its checkpoint (it gathers every worker's state); drop --ckpt-replicas")
        }
        var outer = OuterSyncOptions(syncEvery: x.syncEvery, workers: group.count)
        outer.lr = x.lr; outer.momentum = x.momentum; outer.compression = x.compression; outer.overlapped = x.overlapped
        options.outer = outer
        options.optimizer.gradClip = outer.workerGradClip(options.optimizer.gradClip)
        try options.validate(worldSize: worldSize)
        return (options, group)
    }

    /// Cores this rank uses: --threads, or under Slurm the job's --cpus-per-task, or this node's
    /// cores shared among its ranks; one when the strategy's bits depend on BLAS's thread count.
    static func coresPerRank(_ request: TrainingRequest, _ comm: Communicator) -> Int {
        if request.options.reduction.strategy.needsOneBLASThread { return 1 }
        if let threads = request.threads { return threads }
        if let slurm = ProcessInfo.processInfo.environment["SLURM_CPUS_PER_TASK"].flatMap(Int.init), slurm > 0 { return slurm }
        return max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, comm.localSize))
    }

    /// The Slurm job this runs in, for the run's header: nil outside Slurm.
    static func slurmAllocation() -> String? {
        let env = ProcessInfo.processInfo.environment
        guard let job = env["SLURM_JOB_ID"] else { return nil }
        let nodes = env["SLURM_JOB_NUM_NODES"] ?? env["SLURM_NNODES"] ?? "?"
        let tasks = env["SLURM_NTASKS"].map { ", \($0) task(s)" } ?? ""
        let cpus = env["SLURM_CPUS_PER_TASK"].map { ", \($0) cpu(s) per task" } ?? ""
        return "slurm job \(job): \(nodes) node(s) \(env["SLURM_JOB_NODELIST"] ?? "")\(tasks)\(cpus)"
    }

    /// Bytes of memory this host can still give processes (/proc/meminfo's MemAvailable), nil
    /// where there is no such file.
    static func availableMemory() -> Int? { kibibytes(in: "/proc/meminfo", field: "MemAvailable").map { $0 * 1024 } }
}

/// A field in kB of a /proc file such as /proc/meminfo or /proc/self/status ("Name:   1234 kB"),
/// nil where there is no such file or field.
func kibibytes(in file: String, field: String) -> Int? {
    guard let text = try? String(contentsOfFile: file, encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return nil }
    return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
}
