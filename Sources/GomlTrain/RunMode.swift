// RunMode: what a run does around the trainer's steps, behind one protocol. Synchronous
// training (SynchronousRun) is the plain case: the trainer's parameters are the model and
// every rank holds them. DiLoCo (OuterSync, LocalSGD.swift) keeps a model of its own
// (θ_global) beside the workers' and changes what a step reports, what is evaluated and what
// a checkpoint holds. A run extension rather than a strategy: a strategy turns one step's
// gradients into one update, and DiLoCo wraps whole runs of steps, with inner strategies of
// either kind.

import GomlComm
import GomlCore
import GomlIO

public protocol RunMode: AnyObject {
    /// Every rank of the job (the trainer's communicator may span one worker).
    var world: Communicator { get }
    /// What the run evaluates, samples and saves as its model.
    var model: FloatBuffer { get }
    /// Lines the run header adds about the mode.
    var headerLines: [String] { get }
    /// After initialisation, when every rank holds the seed's parameters.
    func start()
    /// Collective over the job, after the step and generators are restored: the parameters,
    /// moments and anything else of `root`'s checkpoint (nil elsewhere).
    func restore(_ ckpt: TrainingCheckpoint?, root: Int)
    /// The step's result as the job reports it (collective).
    func agree(_ result: StepResult) -> StepResult
    /// After step `step`: what it adds to the step's metrics, and seconds of training time
    /// beyond the trainer's step. Collective; throws RunFailure when ranks disagree.
    func afterStep(_ step: Int, isLast: Bool) throws -> (fields: [(String, String)], seconds: Double)
    /// The model's validation loss (collective; NaN on ranks that do not compute it).
    func evaluate() -> Double
    /// The rank whose data position and parameter checksum rank `rank` must match each step.
    func reference(of rank: Int) -> Int
    /// Collective: calls `body` on each of `writers` with the state a checkpoint stores.
    func withCheckpointState(at writers: [Int], _ body: (CheckpointState) -> Void)
}

/// What a checkpoint stores beyond the step, Adam's step and the sample generator.
public struct CheckpointState {
    public let params: UnsafeBufferPointer<Float>, m: UnsafeBufferPointer<Float>, v: UnsafeBufferPointer<Float>
    public let batchGenerator: [UInt64]
    public let outer: OuterCheckpoint?
    /// What the checkpoint line adds, e.g. what the files hold.
    public let note: String?
}

/// Synchronous training: every rank one replica of the trainer's parameters, every step.
public final class SynchronousRun: RunMode {
    private let trainer: Trainer
    public var world: Communicator { trainer.comm }
    public var model: FloatBuffer { trainer.params }
    public var headerLines: [String] { [] }

    public init(trainer: Trainer) { self.trainer = trainer }

    public func start() {}

    /// `root` broadcasts the parameters; the strategy keeps the moments whole or a slice of
    /// them, whatever the saving run's world size.
    public func restore(_ ckpt: TrainingCheckpoint?, root: Int) {
        if let ckpt { _ = trainer.params.pointer.update(from: ckpt.params) }
        world.broadcast(UnsafeMutableRawBufferPointer(trainer.params.pointer), root: root)
        if let ckpt {
            ckpt.m.withUnsafeBufferPointer { m in ckpt.v.withUnsafeBufferPointer { v in trainer.strategy.loadWholeOptimizerState(m: m, v: v, root: root) } }
        } else {
            trainer.strategy.loadWholeOptimizerState(m: nil, v: nil, root: root)
        }
    }

    public func agree(_ result: StepResult) -> StepResult { result }
    public func afterStep(_ step: Int, isLast: Bool) throws -> (fields: [(String, String)], seconds: Double) { ([], 0) }
    public func evaluate() -> Double { trainer.evaluate() }
    public func reference(of rank: Int) -> Int { 0 }

    /// The strategy gathers the moments (when sharded) to each writer.
    public func withCheckpointState(at writers: [Int], _ body: (CheckpointState) -> Void) {
        trainer.strategy.withWholeState(at: writers) { params, m, v in
            body(CheckpointState(params: params, m: m, v: v, batchGenerator: trainer.sampler.rng.stateWords, outer: nil, note: nil))
        }
    }
}
