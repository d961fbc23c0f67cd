// Trainer: one data-parallel training step and distributed evaluation, per docs/model.md.
// Every rank runs the same code on its shard: the Trainer keeps the models, worker threads,
// data and losses; its DataParallelStrategy turns gradients into the update. All
// communication goes through `Communicator`. A step allocates nothing: buffers are made once.

import Foundation
import GomlComm
import GomlCore

public struct StepTimings: Sendable {
    /// `forward` is computation alone: the time it waited for parameters still arriving (the
    /// sharded all-gather of the last update) is `forwardWait`, exposed communication.
    public var forward = 0.0, forwardWait = 0.0, backward = 0.0, reduce = 0.0, optimizer = 0.0
    /// Seconds the gradient all-reduce kept the network busy; with overlap most of it runs
    /// during backward, so it is not a phase of the step (`reduce` is what was left exposed).
    public var communication = 0.0
    public var total: Double { forward + forwardWait + backward + reduce + optimizer }
}

public struct StepResult: Sendable {
    public let step: Int
    public let loss: Double
    public let gradNorm: Double
    public let lr: Double
    public let timings: StepTimings
    public var finite: Bool { loss.isFinite && gradNorm.isFinite }
}

public final class Trainer {
    public let options: TrainingOptions
    public let comm: Communicator
    public let layout: ParameterLayout
    /// How gradients become the update, chosen once from `options.reduction`: it owns the
    /// parameters, gradients, collectives and optimizer.
    public let strategy: DataParallelStrategy
    /// Between steps complete only after `waitForParameters()` (see there).
    public var params: FloatBuffer { strategy.parameters }
    public var optimizer: AdamW { strategy.optimizer }
    public var sampler: BatchSampler
    /// Steps completed so far.
    public var step = 0
    /// The options' schedule, or on a resume with another --steps the one that continues the
    /// checkpoint's rate (TrainingRun.restore).
    public var schedule: LearningRateSchedule
    /// Fault injection for tests (hidden --fault-gradient-scale): the reduced gradient times the
    /// world size, as summing the ranks' mean gradients instead of averaging them would leave it.
    public var faultGradientScale = false

    /// Read-only views of the corpus (mapped files): nothing is copied.
    private let train: ByteSource, validation: ByteSource
    public var trainBytes: Int { train.count }
    public var validationBytes: Int { validation.count }
    /// One model per worker thread; workers split this rank's shard as `strategy.passes` says.
    private let models: [Transformer]
    private var model: Transformer { models[0] }
    private let pool: WorkerPool
    private var workerTimings = StepTimings()
    private let myShard: Range<Int>
    private var offsets: [Int]
    /// [B] global slots of per-sequence loss sums; this rank fills its own, the rest stay 0.
    private let sequenceLosses: UnsafeMutableBufferPointer<Double>
    private var evalLosses: [Double]         // [evalBatches·B]
    private let tokensPerStep: Int

    /// `workers`: the rank's cores. Up to that many threads split its sequences (the strategy
    /// decides how many); cores left over split each worker's products.
    /// In a low-communication run `comm` spans this rank's worker (`group`), which trains on its
    /// share of the global batch from its own stream of sequences; evaluation keeps the global batch.
    public init(options: TrainingOptions, comm: Communicator, split: TextSplit, workers requested: Int = 1,
                communication: CommunicationSettings = CommunicationSettings(), group: WorkerGroup = .whole) throws {
        try options.validate(worldSize: comm.size * group.count)
        var workerOptions = options
        workerOptions.batch = options.batch / group.count
        let strategyType = options.reduction.strategy
        try strategyType.validate(workerOptions, communication: communication, worldSize: comm.size)
        try split.check(seqLen: options.model.seqLen)
        self.options = options
        self.comm = comm
        bucketBytes = communication.bucketBytes
        schedule = options.schedule
        layout = ParameterLayout(options.model)
        let T = options.model.seqLen
        train = split.train
        validation = split.validation
        sampler = BatchSampler(seed: options.seed, batch: workerOptions.batch, seqLen: T, dataCount: split.train.count)
        for _ in 0..<group.index { sampler.rng.jump() }
        myShard = shard(batch: workerOptions.batch, rank: comm.rank, worldSize: comm.size)
        strategy = strategyType.init(options: workerOptions, layout: layout, comm: comm, shard: myShard, workers: requested,
                                     communication: communication)
        let passes = strategy.passes
        // Cores beyond one per worker go to each worker's products: bf16 products split among a
        // worker's share (OpenBLAS then keeps one thread: its idle threads spin on the helpers'
        // cores); OpenBLAS's thread count is process-wide, so float32 gets them only when one
        // worker runs.
        let bf16Threads = max(1, requested / passes.workers)
        blasThreads = options.precision == .bf16 || passes.workers > 1 ? 1 : max(1, requested)
        models = (0..<passes.workers).map { _ in
            Transformer(config: options.model, batch: passes.microBatch, products: makeProducts(options.precision, threads: bf16Threads))
        }
        finalPass = .allocate(capacity: models.count)
        finalPass.initialize(repeating: false)
        parameterWaits = .allocate(capacity: models.count)
        parameterWaits.initialize(repeating: 0)
        // The optimizer's update runs on every core of the rank; the passes on the workers' threads.
        pool = WorkerPool(count: max(models.count, requested))
        offsets = Array(repeating: 0, count: workerOptions.batch)
        sequenceLosses = .allocate(capacity: workerOptions.batch)
        sequenceLosses.initialize(repeating: 0)
        evalLosses = Array(repeating: 0, count: options.evalBatches * options.batch)
        tokensPerStep = workerOptions.batch * T
        forwardBackwardJob = { [unowned self] worker in self.forwardBackward(worker: worker) }
        for (worker, model) in models.enumerated() {
            model.gradientsFinal = { [unowned self] offset in
                if self.finalPass[worker] { self.strategy.gradientsFinal(worker: worker, from: offset) }
            }
            model.parametersNeeded = { [unowned self] offset in
                let start = DispatchTime.now().uptimeNanoseconds
                self.strategy.parametersNeeded(upTo: offset)
                self.parameterWaits[worker] += DispatchTime.now().uptimeNanoseconds - start
            }
        }
    }

    /// The pool's job during the passes (made once: a round allocates nothing).
    private var forwardBackwardJob: (Int) -> Void = { _ in }
    /// Per worker: nanoseconds its forward passes of this step waited in `parametersNeeded`.
    private let parameterWaits: UnsafeMutableBufferPointer<UInt64>

    /// Per worker: true during its last pass, whose backward makes its gradients final.
    private let finalPass: UnsafeMutableBufferPointer<Bool>

    /// What this rank holds for training, as `goml-dist plan` counts it (RankMemory.of).
    public var memory: RankMemory {
        RankMemory.of(layout: layout, mode: options.reduction, worldSize: comm.size, rank: comm.rank, workers: models.count,
                      microBatch: model.batch, bucketBytes: bucketBytes)
    }

    /// Bytes this rank holds for training: parameters, gradients, optimizer state, activations.
    public var memoryPerRank: Int { memory.total }

    /// The run header's memory line (train and bench print it).
    public var memorySummary: String { memory.summary }
    private let bucketBytes: Int

    /// Activation memory of this rank: every worker's model for one micro-batch.
    public var activationBytes: Int { models.reduce(0) { $0 + $1.activationBytes } }
    public var microBatch: Int { model.batch }

    deinit { sequenceLosses.deallocate(); finalPass.deallocate(); parameterWaits.deallocate() }

    public var workers: Int { models.count }
    /// Cores each worker's matrix products are split among (at fp32 once configureBLAS has run).
    public var productThreads: Int { model.products.threads }
    /// OpenBLAS threads for this run (float32 products, and bf16 runs' float32 attention scores).
    public let blasThreads: Int

    /// Forward and backward of one worker's passes, into the buffers the strategy gives; the
    /// time of forward (its waits for parameters apart) and of the strategy's work after each
    /// pass is recorded for worker 0.
    private func forwardBackward(worker: Int) {
        guard worker < models.count else { return }   // a core kept for the optimizer and the products
        let model = models[worker], passes = strategy.passes, params = strategy.parameters
        var forward: UInt64 = 0, afterPasses: UInt64 = 0
        parameterWaits[worker] = 0
        for pass in 0..<passes.passesPerWorker {
            let range = passes.sequences(worker: worker, pass: pass)
            load(sequences: range, into: model, from: train, offsets: offsets)
            let start = DispatchTime.now().uptimeNanoseconds
            model.forward(UnsafePointer(params.base), gradScale: 1 / Float(tokensPerStep))
            forward += DispatchTime.now().uptimeNanoseconds - start
            let (gradient, accumulate) = strategy.gradientBuffer(worker: worker, pass: pass)
            finalPass[worker] = pass == passes.passesPerWorker - 1
            model.backward(UnsafePointer(params.base), gradient.base, accumulate: accumulate)
            for (row, g) in range.enumerated() { sequenceLosses[g] = model.lossSum(sequence: row) }
            let ended = DispatchTime.now().uptimeNanoseconds
            strategy.passFinished(worker: worker, pass: pass)
            afterPasses += DispatchTime.now().uptimeNanoseconds - ended
        }
        if worker == 0 {
            workerTimings.forwardWait = Double(parameterWaits[0]) / 1e9
            workerTimings.forward = Double(forward - parameterWaits[0]) / 1e9
            workerTimings.reduce = Double(afterPasses) / 1e9
        }
    }

    /// Returns once the parameters hold the last update everywhere (sharded, the all-gather
    /// still arriving); `params` may be incomplete otherwise between steps.
    public func waitForParameters() { strategy.waitForParameters() }

    /// Rank 0 draws docs/model.md's initialisation from the seed and broadcasts it, so replicas start identical.
    public func initialiseParameters() {
        if comm.isRoot {
            var rng = Xoshiro256(seed: options.seed)
            layout.initialise(params.pointer, rng: &rng)
        }
        comm.broadcast(UnsafeMutableRawBufferPointer(params.pointer), root: 0)
    }

    /// Loads sequences `range` of a batch (their start offsets) into the model's rows.
    private func load(sequences range: Range<Int>, into model: Transformer, from data: ByteSource, offsets: [Int]) {
        for (row, g) in range.enumerated() {
            fillSequence(tokens: model.tokens, targets: model.targets, row: row, from: data, offset: offsets[g],
                         seqLen: model.seqLen)
        }
    }

    /// The pages this step's sequences were read from leave the process (see ByteSourceOwner).
    private func releaseSequences(_ range: Range<Int>) {
        for g in range { train.releasePages(offset: offsets[g], count: options.model.seqLen + 1) }
    }

    private var timings = StepTimings()
    private var clock: UInt64 = 0

    /// Charges the time since the last lap to `phase`.
    private func lap(_ phase: WritableKeyPath<StepTimings, Double>) {
        let now = DispatchTime.now().uptimeNanoseconds
        timings[keyPath: phase] += Double(now - clock) / 1e9
        clock = now
    }

    /// After the workers: worker 0's forward time, its waits for parameters and the strategy's work after its passes;
    /// the rest is backward (other workers finish within worker 0's time, shards being equal).
    private func chargeWorkerPhases() {
        timings.forward = workerTimings.forward
        timings.forwardWait = workerTimings.forwardWait
        timings.reduce = workerTimings.reduce
        let now = DispatchTime.now().uptimeNanoseconds
        timings.backward = Double(now - clock) / 1e9 - timings.forward - timings.forwardWait - timings.reduce
        clock = now
    }

    /// One optimiser step on the next global batch. Every rank returns the same result.
    public func trainStep() -> StepResult {
        let attempted = step + 1
        timings = StepTimings()
        clock = DispatchTime.now().uptimeNanoseconds
        // Load: this step's sequences (each pass reads its own rows).
        sampler.next(into: &offsets)
        sequenceLosses.update(repeating: 0)
        // Forward and backward on every worker; the passes hand their gradients to the strategy.
        strategy.beginStep()
        pool.run(forwardBackwardJob)
        releaseSequences(myShard)
        chargeWorkerPhases()
        // Reduce: the gradient across workers and ranks, then the losses.
        timings.communication = strategy.reduce()
        let loss = reduceLoss()
        lap(\.reduce)
        // Here the reduced gradient (strategy.reducedGradient) is final: whole and the same on
        // every rank, or, sharded, on this rank's slices.
        if faultGradientScale {
            let gradient = strategy.reducedGradient
            for i in gradient.indices { gradient[i] *= Float(comm.size) }
        }
        // Norm, clip and AdamW.
        let lr = schedule.rate(atStep: attempted)
        let update = strategy.finishStep(lr: lr, lossIsFinite: loss.isFinite, threads: pool)
        if update.applied { step = attempted }
        lap(\.optimizer)
        return StepResult(step: attempted, loss: loss, gradNorm: update.gradNorm, lr: lr, timings: timings)
    }

    /// The batch's mean loss per token. Each slot is non-zero on one rank only, so the sum over
    /// ranks is exact; then a fixed-order total. Collective.
    private func reduceLoss() -> Double {
        comm.allReduceSum(sequenceLosses)
        var lossSum = 0.0
        for value in sequenceLosses { lossSum += value }
        return lossSum / Double(tokensPerStep)
    }

    /// docs/model.md's validation loss: the fixed validation sequences split evenly over ranks, each
    /// sequence's loss reduced exactly, batch means averaged in order. Collective.
    public func evaluate() -> Double {
        let B = options.batch, T = options.model.seqLen, count = options.evalBatches * B
        waitForParameters()
        let all = validationOffsets(validationCount: validation.count, seqLen: T, count: count)
        let mine = shard(batch: count, rank: comm.rank, worldSize: comm.size)
        for i in evalLosses.indices { evalLosses[i] = 0 }
        var start = mine.lowerBound
        while start < mine.upperBound {
            // A short final chunk repeats its last sequence in the spare rows; those losses are not used.
            let end = min(start + model.batch, mine.upperBound)
            let chunk = (start..<end).map { all[$0] } + Array(repeating: all[end - 1], count: model.batch - (end - start))
            load(sequences: 0..<model.batch, into: model, from: validation, offsets: chunk)
            for offset in chunk { validation.releasePages(offset: offset, count: T + 1) }
            model.forward(UnsafePointer(params.base))
            for g in start..<end { evalLosses[g] = model.lossSum(sequence: g - start) }
            start = end
        }
        evalLosses.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        var total = 0.0
        for b in 0..<options.evalBatches {
            var batchSum = 0.0
            for s in 0..<B { batchSum += evalLosses[b * B + s] }
            total += batchSum / Double(B * T)
        }
        return total / Double(options.evalBatches)
    }

    /// Replicas that drifted apart by one bit disagree on this.
    public func parameterChecksum() -> UInt64 {
        waitForParameters()
        return strategy.parameterChecksum()
    }
}
