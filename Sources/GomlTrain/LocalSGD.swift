// LocalSGD: DiLoCo-style low-communication training (docs/low-communication.md). Ranks are
// grouped into workers; inside a worker the Trainer runs synchronously on the worker's
// communicator, as a whole job would (sharding included). Every H steps OuterSync averages
// the workers' parameter change Δ = θ_global − θ_worker over the peers communicator (the
// ranks holding the same place in every worker), applies the outer Nesterov step to
// θ_global, and every worker restarts from it. Inner AdamW state stays in each worker.

import Foundation
import GomlComm
import GomlCore
import GomlIO

/// The worker this rank trains in, and how many workers the job has.
public struct WorkerGroup: Sendable, Equatable {
    public let index: Int, count: Int
    /// Every rank's worker (world ranks in order).
    public let workerOfRank: [Int]

    /// A synchronous run: one worker of every rank.
    public static let whole = WorkerGroup(index: 0, count: 1, workerOfRank: [])

    /// Workers of `workerSize` consecutive ranks, or `workersPerHost` per host (default one),
    /// the host's ranks in rank order; rank 0 is always in worker 0. One-line errors.
    public static func plan(hosts: RankHosts, rank: Int, workerSize: Int?, workersPerHost: Int?) throws -> WorkerGroup {
        let size = hosts.names.count
        var workerOfRank: [Int]
        if let workerSize {
            guard workerSize > 0, size % workerSize == 0 else {
                throw ConfigError("--worker-size \(workerSize) does not divide the \(size) ranks; choose a divisor of \(size)")
            }
            workerOfRank = (0..<size).map { $0 / workerSize }
        } else {
            let perHost = workersPerHost ?? 1
            let hostNames = hosts.leaders.map { hosts.names[$0] }
            let ranksOn = hostNames.map { name in hosts.names.indices.filter { hosts.names[$0] == name } }
            guard perHost > 0, ranksOn.allSatisfy({ $0.count % perHost == 0 }) else {
                throw ConfigError("--workers-per-host \(perHost) does not divide the ranks on every host (\(ranksOn.map(\.count).map(String.init).joined(separator: ", "))); choose a divisor, or --worker-size")
            }
            guard Set(ranksOn.map(\.count)).count == 1 else {
                throw ConfigError("hosts run different numbers of ranks (\(ranksOn.map(\.count).map(String.init).joined(separator: ", "))), so workers of one host each would differ in size; run as many ranks on every host or pass --worker-size")
            }
            workerOfRank = Array(repeating: 0, count: size)
            let ranksPerWorker = ranksOn[0].count / perHost
            for (host, ranks) in ranksOn.enumerated() {
                for (local, r) in ranks.enumerated() { workerOfRank[r] = host * perHost + local / ranksPerWorker }
            }
        }
        return WorkerGroup(index: workerOfRank[rank], count: (workerOfRank.max() ?? 0) + 1, workerOfRank: workerOfRank)
    }
}

public final class OuterSync {
    public let options: OuterSyncOptions
    /// Every rank of the job; this rank's worker; the ranks at this rank's place in every worker.
    public let world: Communicator, worker: Communicator, peers: Communicator
    public let group: WorkerGroup
    private let trainer: Trainer
    /// θ_global: the same on every rank; what rank 0 evaluates and checkpoints as the model.
    public let global: FloatBuffer
    /// The pseudo-gradient Δ while an outer step runs (and, overlapped, until it is applied).
    private let scratch: FloatBuffer
    /// The worker's parameters while θ_global is evaluated.
    private let parked: FloatBuffer
    /// Overlapped: the worker's parameters when its Δ left (θ_worker at the sync step).
    private let snapshot: FloatBuffer?
    /// Overlapped: the outer step started at the last sync and not yet applied; `arrived` once
    /// its sum is in `scratch` (waited for by a checkpoint, or restored from one).
    private enum Pending { case none, inFlight, arrived }
    private var pending = Pending.none
    private let outer: NesterovSGD
    /// Fault injection for tests (hidden --fault-outer-no-restart): workers keep their own
    /// parameters after an outer step instead of restarting from θ_global.
    public var faultNoRestart = false
    /// Fault injection for tests (hidden --fault-lost-outer-rank): this rank starts no outer
    /// all-reduce and stops responding, as a rank lost during it would.
    public var faultLostDuringOuterSum = false
    /// The last completed outer all-reduce: seconds the training waited for it (exposed) and
    /// seconds it ran while the next inner step computed (hidden).
    public private(set) var exposed = 0.0, hidden = 0.0

    /// Makes the outer all-reduce's reducer (no collective here).
    public init(options: OuterSyncOptions, world: Communicator, worker: Communicator, peers: Communicator, group: WorkerGroup,
                trainer: Trainer, pacing: ReducerPacing) {
        self.options = options
        self.world = world
        self.worker = worker
        self.peers = peers
        self.group = group
        self.trainer = trainer
        let count = trainer.layout.count
        global = FloatBuffer(count: count)
        let scratch = FloatBuffer(count: count)
        self.scratch = scratch
        snapshot = options.overlapped ? FloatBuffer(count: count) : nil
        parked = FloatBuffer(count: count)
        outer = NesterovSGD(count: count, lr: options.lr, momentum: options.momentum)
        // MPI counts are 32-bit: Δ goes in buckets of at most 2^28 values.
        let chunk = 1 << 28
        let buckets = stride(from: 0, to: count, by: chunk).map { UnsafeMutableBufferPointer(rebasing: scratch.pointer[$0..<min(count, $0 + chunk)]) }
        sums = Reducer.allReduce(peers, buckets: buckets, compression: options.compression, hierarchical: false, pacing: pacing,
                                 what: "MPI_Iallreduce (DiLoCo's outer pseudo-gradient)")
        bucketCount = buckets.count
    }

    private let bucketCount: Int
    private let sums: Reducer
    private var lossAndFinite = [0.0, 0.0]

    /// Bytes of the buffers an OuterSync adds to its rank: θ_global, Δ (scratch) and the parked
    /// parameters, and overlapped the snapshot (`goml-dist plan` counts them).
    public static func bufferBytes(parameters: Int, overlapped: Bool) -> Int {
        (overlapped ? 4 : 3) * parameters * MemoryLayout<Float>.stride
    }

    /// Bytes each rank hands the outer all-reduce per outer step: the whole Δ, float32 or bf16.
    public var bytesPerOuterStep: Int { trainer.layout.count * (options.compression == .bf16 ? 2 : 4) }

    /// After initialisation (every worker drew the same parameters from the seed): θ_global ← θ.
    public func start() {
        _ = global.pointer.update(fromContentsOf: trainer.params.pointer)
    }

    /// What `afterStep` did.
    public struct Outcome {
        /// An outer step was applied (its times are `exposed` and `hidden`).
        public var applied = false
        /// A blocking outer step ran: every worker now holds θ_global.
        public var workersRestarted = false
    }

    /// After inner step `step`: applies an overlapped outer step started at the step before,
    /// then, every H steps and at the last step, syncs: blocking, or (overlapped) starting the
    /// all-reduce that the next step hides. Collective over the peers; allocates nothing.
    func sync(afterStep step: Int, isLast: Bool) -> Outcome {
        var outcome = Outcome()
        let syncs = step % options.syncEvery == 0 || isLast
        // Sharded inside the worker, the last update's all-gather may still be arriving.
        if pending != .none || syncs { trainer.waitForParameters() }
        if pending != .none { applyOverlapped(); outcome.applied = true }
        guard syncs else { return outcome }
        if options.overlapped && !isLast {
            startOuterSum()
            _ = snapshot!.pointer.update(fromContentsOf: trainer.params.pointer)
            pending = .inFlight
        } else {
            let started = DispatchTime.now().uptimeNanoseconds
            startOuterSum()
            _ = sums.waitAll()
            exposed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            hidden = 0
            outer.update(global.pointer, pseudoGradient: UnsafeBufferPointer(scratch.pointer), gradScale: 1 / Float(options.workers))
            if !faultNoRestart { _ = trainer.params.pointer.update(fromContentsOf: global.pointer) }
            outcome.applied = true
            outcome.workersRestarted = true
        }
        return outcome
    }

    /// Δ = θ_global − θ_worker into `scratch`, and its sum over the workers started.
    private func startOuterSum() {
        while faultLostDuringOuterSum { sleep(3600) }
        let g = global.base, p = trainer.params.base, d = scratch.base
        for i in 0..<scratch.count { d[i] = g[i] - p[i] }
        for bucket in 0..<bucketCount { sums.start(bucket) }
    }

    /// The delayed outer step: θ_global moved by the summed Δ, and the worker continues from
    /// it plus what it learnt since its Δ left: θ_worker ← θ_global + (θ_worker − snapshot).
    private func applyOverlapped() {
        let started = DispatchTime.now().uptimeNanoseconds
        let busy = pending == .inFlight ? sums.waitAll() : 0
        exposed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        hidden = max(0, busy - exposed)
        pending = .none
        outer.update(global.pointer, pseudoGradient: UnsafeBufferPointer(scratch.pointer), gradScale: 1 / Float(options.workers))
        guard !faultNoRestart else { return }
        let g = global.base, p = trainer.params.base, s = snapshot!.base
        for i in 0..<global.count { p[i] = g[i] + (p[i] - s[i]) }
    }

    /// Runs `body` with θ_global in the worker's parameters, then puts the worker's back.
    public func withGlobalParameters<T>(_ body: () throws -> T) rethrows -> T {
        trainer.waitForParameters()
        _ = parked.pointer.update(fromContentsOf: trainer.params.pointer)
        _ = trainer.params.pointer.update(fromContentsOf: global.pointer)
        defer { _ = trainer.params.pointer.update(fromContentsOf: parked.pointer) }
        return try body()
    }

    /// Collective over the job: every rank's parameter checksum, checked to agree inside each
    /// worker and, right after a blocking outer step (`synced`), across workers; and θ_global's,
    /// checked to agree everywhere. Returns each worker's.
    public func workerChecksums(step: Int, synced: Bool) throws -> [UInt64] {
        let checksum = trainer.parameterChecksum(), globalChecksum = contentChecksum(UnsafeBufferPointer(global.pointer))
        let (mineHigh, mineLow) = WordHalves.split(checksum), (globalHigh, globalLow) = WordHalves.split(globalChecksum)
        let mine = [Double(group.index), mineHigh, mineLow, globalHigh, globalLow]
        var all = [Double](repeating: 0, count: 5 * world.size)
        mine.withUnsafeBufferPointer { m in all.withUnsafeMutableBufferPointer { world.allGather(m, into: $0) } }
        let sums = (0..<world.size).map { WordHalves.join(all[5 * $0 + 1], all[5 * $0 + 2]) }
        if let r = (0..<world.size).first(where: { all[5 * $0 + 3] != all[3] || all[5 * $0 + 4] != all[4] }) {
            throw RunFailure(message: world.isRoot ? "ranks 0 and \(r) hold different θ_global after step \(step); the outer step diverged — stopping" : "",
                             code: ExitStatus.replicasDiverged.code)
        }
        var perWorker = [UInt64?](repeating: nil, count: group.count)
        for r in 0..<world.size {
            let w = Int(all[5 * r])
            if let first = perWorker[w], first != sums[r] {
                throw RunFailure(message: world.isRoot ? "rank \(r) disagrees with the rest of worker \(w) on the parameters after step \(step); replicas diverged — stopping" : "",
                                 code: ExitStatus.replicasDiverged.code)
            }
            perWorker[w] = sums[r]
        }
        let checksums = perWorker.map { $0 ?? 0 }
        if synced, let w = checksums.firstIndex(where: { $0 != checksums[0] }) {
            throw RunFailure(message: world.isRoot ? "workers 0 and \(w) hold different parameters right after the outer step at step \(step); they must all restart from θ_global — stopping" : "",
                             code: ExitStatus.replicasDiverged.code)
        }
        return checksums
    }

    /// Collective: gathers every worker's parameters, inner moments and batch generator to rank
    /// 0 of the job (through each worker's rank 0), then calls `body` there with them and the
    /// outer momentum.
    func withWorkerStates(_ body: (OuterCheckpoint) -> Void) {
        // An outer sum in flight is awaited and stored; it is applied after the next step as planned.
        if pending == .inFlight { _ = sums.waitAll(); pending = .arrived }
        trainer.waitForParameters()
        trainer.strategy.withWholeState(at: [0]) { _, m, v in
            // Only each worker's rank 0 is here: the peers at index 0 are exactly those ranks.
            let count = trainer.layout.count, counts = Array(repeating: count, count: peers.size)
            var params = [Float](), moments1 = [Float](), moments2 = [Float]()
            if peers.isRoot { params = Array(repeating: 0, count: count * peers.size); moments1 = params; moments2 = params }
            params.withUnsafeMutableBufferPointer { peers.gather(UnsafeBufferPointer(trainer.params.pointer), into: $0, counts: counts, root: 0) }
            moments1.withUnsafeMutableBufferPointer { peers.gather(m, into: $0, counts: counts, root: 0) }
            moments2.withUnsafeMutableBufferPointer { peers.gather(v, into: $0, counts: counts, root: 0) }
            let words = trainer.sampler.rng.stateWords.flatMap { let (high, low) = WordHalves.split($0); return [high, low] }
            var allWords = [Double](repeating: 0, count: 8 * peers.size)
            words.withUnsafeBufferPointer { w in allWords.withUnsafeMutableBufferPointer { peers.allGather(w, into: $0) } }
            guard peers.isRoot else { return }
            let workers = (0..<peers.size).map { w in
                WorkerCheckpoint(params: Array(params[(w * count)..<((w + 1) * count)]), m: Array(moments1[(w * count)..<((w + 1) * count)]),
                                 v: Array(moments2[(w * count)..<((w + 1) * count)]),
                                 generator: (0..<4).map { WordHalves.join(allWords[8 * w + 2 * $0], allWords[8 * w + 2 * $0 + 1]) })
            }
            let sum = pending == .none ? nil : Array(scratch.pointer)
            body(OuterCheckpoint(momentum: Array(outer.buffer), workers: workers, pendingSum: sum))
        }
    }

    /// Collective over the job: θ_global, the outer momentum and this worker's parameters,
    /// moments and batch generator from `root`'s checkpoint (nil elsewhere).
    public func restore(_ ckpt: TrainingCheckpoint?, root: Int) {
        if let ckpt { _ = trainer.params.pointer.update(from: ckpt.params) }
        func broadcast(_ values: [Float]?, into buffer: UnsafeMutableBufferPointer<Float>) {
            if let values { _ = buffer.update(fromContentsOf: values) }
            world.broadcast(UnsafeMutableRawBufferPointer(buffer), root: root)
        }
        broadcast(ckpt?.params, into: global.pointer)
        broadcast(ckpt?.outer?.momentum, into: outer.buffer)
        let count = trainer.layout.count
        var m = [Float](repeating: 0, count: count), v = m, words = [UInt64](repeating: 0, count: 4)
        for w in 0..<group.count {
            let state = ckpt?.outer?.workers[w], mine = w == group.index
            // Each worker's state passes through the scratch buffer; this worker keeps its own.
            broadcast(state?.params, into: scratch.pointer)
            if mine { _ = trainer.params.pointer.update(fromContentsOf: scratch.pointer) }
            broadcast(state?.m, into: scratch.pointer)
            if mine { m = Array(scratch.pointer) }
            broadcast(state?.v, into: scratch.pointer)
            if mine { v = Array(scratch.pointer) }
            var generator = state?.generator ?? [0, 0, 0, 0]
            generator.withUnsafeMutableBytes { world.broadcast($0, root: root) }
            if mine { words = generator }
        }
        m.withUnsafeBufferPointer { m in v.withUnsafeBufferPointer { v in trainer.strategy.loadWholeOptimizerState(m: m, v: v, root: 0) } }
        trainer.sampler.rng = Xoshiro256(state: words)
        // Saved right after an overlapped sync: its sum, and the parameters its Δ left from.
        var hasPending = [ckpt?.outer?.pendingSum == nil ? 0.0 : 1.0]
        hasPending.withUnsafeMutableBytes { world.broadcast($0, root: root) }
        if hasPending[0] != 0, let snapshot {
            broadcast(ckpt?.outer?.pendingSum, into: scratch.pointer)
            _ = snapshot.pointer.update(fromContentsOf: trainer.params.pointer)
            pending = .arrived
        }
    }
}

/// DiLoCo as the run sees it: θ_global is the model, a step's loss is the workers' mean, and
/// every H steps (and at the last) the outer step runs.
extension OuterSync: RunMode {
    public var model: FloatBuffer { global }

    public var headerLines: [String] {
        let x = options, o = trainer.options
        return [String(format: "mode diloco: %d worker(s) × %d rank(s), sync every %d steps, outer Nesterov lr %g momentum %g; Δ %@ on the wire: %.2f MB per rank per outer step, %@",
                       x.workers, worker.size, x.syncEvery, x.lr, x.momentum, x.compression == .none ? "float32" : "bf16",
                       Double(bytesPerOuterStep) / 1e6,
                       x.overlapped ? "overlapped with the next inner step, applied one step late" : "blocking (all of it exposed)"),
                String(format: "each worker clips its gradient norm at %g: --grad-clip × √%d, a worker's batch being 1/%d of the global one",
                       o.optimizer.gradClip, x.workers, x.workers)]
    }

    /// The step's loss as the mean of the workers' (each its batch's mean), and non-finite on
    /// every rank when it is on any, so that all workers stop together. Collective over the job.
    public func agree(_ result: StepResult) -> StepResult {
        lossAndFinite[0] = result.loss
        lossAndFinite[1] = result.finite ? 0 : 1
        lossAndFinite.withUnsafeMutableBufferPointer { world.allReduceSum($0) }
        let loss = lossAndFinite[1] == 0 ? lossAndFinite[0] / Double(world.size) : .nan
        return StepResult(step: result.step, loss: loss, gradNorm: result.gradNorm, lr: result.lr, timings: result.timings)
    }

    /// The last step syncs too, so the final model holds every worker's last steps.
    public func afterStep(_ step: Int, isLast: Bool) throws -> (fields: [(String, String)], seconds: Double) {
        let outcome = sync(afterStep: step, isLast: isLast)
        var fields: [(String, String)] = [], seconds = 0.0
        if outcome.applied {
            seconds = exposed
            fields = [("mode", "\"diloco\""), ("sync_every", "\(options.syncEvery)"), ("outer_bytes", "\(bytesPerOuterStep)"),
                      ("outer_comm_exposed_s", String(format: "%.6f", exposed)), ("outer_comm_hidden_s", String(format: "%.6f", hidden))]
        }
        let every = trainer.options.checksumEvery
        if every > 0 && step % every == 0 {
            let sums = try workerChecksums(step: step, synced: outcome.workersRestarted)
            fields.append(("worker_checksums", "[" + sums.map { "\"\(String($0, radix: 16))\"" }.joined(separator: ",") + "]"))
        }
        return (fields, seconds)
    }

    /// θ_global, on worker 0 (the others go on).
    public func evaluate() -> Double {
        group.index == 0 ? withGlobalParameters { trainer.evaluate() } : .nan
    }

    /// Step and options are the job's; data position and parameters the worker's (its first rank's).
    public func reference(of rank: Int) -> Int {
        group.workerOfRank.firstIndex(of: group.workerOfRank[rank])!
    }

    /// Rank 0 writes θ_global as the model, worker 0's moments as the state, and the rest
    /// (outer momentum, every worker's state) in the outer file.
    public func withCheckpointState(at writers: [Int], _ body: (CheckpointState) -> Void) {
        withWorkerStates { state in
            let first = state.workers[0]
            first.m.withUnsafeBufferPointer { m in
                first.v.withUnsafeBufferPointer { v in
                    body(CheckpointState(params: UnsafeBufferPointer(global.pointer), m: m, v: v, batchGenerator: first.generator, outer: state,
                                         note: "θ_global, outer momentum and \(state.workers.count) workers' state"))
                }
            }
        }
    }
}
