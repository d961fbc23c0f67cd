// Every way of splitting a step against one process, with ranks as threads of this process
// (InProcessCommunicator): strategy × overlap × compression × workers × micro-batch × world
// size, some rows resumed half-way. Each row goes through TrainingSetup and TrainingRun as
// `train` does, and must give the one-process run's losses, gradient norms, validation losses
// and parameters at the README's tolerances; a resumed row must equal its uninterrupted twin bit
// for bit; exact rows equal each other bit for bit at every world size (1 to 8 ranks); bf16
// gradients change the numbers, and sharded agrees with replicated under them; sharded on one
// host sums in shared memory, bit for bit as the communicator's reduce-scatter. DiLoCo rows
// (plain averaging or Nesterov momentum, blocking or overlapped) are held against an outer step
// computed here, from one-process workers.

import CBFloat16
import Foundation
import GomlComm
import GomlCore
@testable import GomlTrain
import XCTest

final class StrategyTableTests: XCTestCase {
    /// DiLoCo with `workers` workers syncing every `h` steps, each worker sharded unless `shard`
    /// is false; the outer Nesterov step's lr and momentum; overlapped: applied one step late.
    struct DiLoCo: CustomStringConvertible {
        var h: Int, workers: Int, shard = true, compression = GradientCompression.none
        var lr = 1.0, momentum = 0.0, overlapped = false
        var description: String {
            "diloco H \(h) × \(workers) workers\(shard ? "" : " unsharded")\(compression == .bf16 ? " bf16 Δ" : "")"
                + (lr != 1 || momentum != 0 ? " outer lr \(lr) momentum \(momentum)" : "") + (overlapped ? " overlapped" : "")
        }
        /// The outer step alone (what the reference depends on).
        var outer: String { var d = self; d.shard = true; return d.description }
    }

    enum Strategy: CustomStringConvertible {
        case replicated, sharded, exact
        case diloco(DiLoCo)
        var description: String {
            switch self {
            case .replicated: "replicated"
            case .sharded: "sharded"
            case .exact: "exact"
            case let .diloco(d): d.description
            }
        }
    }

    struct Row: CustomStringConvertible {
        var strategy: Strategy
        var ranks: Int
        var overlap = true
        var compression = GradientCompression.none
        var workers = 1
        var microBatch: Int? = nil
        var resumeAt: Int? = nil
        var batch = StrategyTableTests.batch
        /// Sharded, float32: the ranks (one host) sum gradients in shared memory; false: through
        /// the communicator's reduce-scatter, as across hosts.
        var sharedMemory = true
        var description: String {
            "\(strategy), \(ranks) rank(s), \(overlap ? "overlapped" : "after backward"), \(compression == .none ? "float32" : "bf16") gradients, "
                + "\(workers) worker(s), micro-batch \(microBatch.map(String.init) ?? "whole")" + (batch == StrategyTableTests.batch ? "" : ", batch \(batch)")
                + (resumeAt.map { ", resumed after step \($0)" } ?? "") + (sharedMemory ? "" : ", reduce-scatter through the communicator")
        }
        /// The same row summed in shared memory.
        var sharedMemoryTwin: String { var r = self; r.sharedMemory = true; return r.description }
        /// The same row, uninterrupted.
        var twin: String { var r = self; r.resumeAt = nil; return r.description }
        /// The same row replicated (bf16 gradients: sharded against replicated).
        var replicatedTwin: String { var r = self; r.strategy = .replicated; return r.description }
    }

    static let steps = 6
    static let batch = 12
    /// Validation every 3 steps (and at the last): at a sync of H 3, mid-run otherwise.
    static let evalEvery = 3

    /// Every row: 64 synchronous combinations, exact and DiLoCo ones, and resumed rows.
    static var rows: [Row] {
        var rows: [Row] = []
        for strategy in [Strategy.replicated, .sharded] {
            for ranks in [2, 4] {
                for overlap in [true, false] {
                    for compression in GradientCompression.allCases {
                        for workers in [1, 2] {
                            for microBatch in [nil, 1] {
                                rows.append(Row(strategy: strategy, ranks: ranks, overlap: overlap, compression: compression, workers: workers, microBatch: microBatch))
                            }
                        }
                    }
                }
            }
        }
        rows += [Row(strategy: .replicated, ranks: 3), Row(strategy: .sharded, ranks: 3, workers: 2, microBatch: 2),
                 Row(strategy: .replicated, ranks: 1, workers: 2, microBatch: 2)]
        // The communicator's reduce-scatter, held bit for bit against the shared-memory sum (both
        // add ranks in rank order), overlapped or not.
        rows += [Row(strategy: .sharded, ranks: 2, sharedMemory: false), Row(strategy: .sharded, ranks: 3, workers: 2, microBatch: 2, sharedMemory: false),
                 Row(strategy: .sharded, ranks: 4, overlap: false, workers: 2, microBatch: 1, sharedMemory: false)]
        for ranks in [1, 2, 4] {
            rows += [Row(strategy: .exact, ranks: ranks), Row(strategy: .exact, ranks: ranks, microBatch: 3)]
        }
        // Eight ranks need a batch of 16: held bit for bit against one rank at that batch.
        rows += [Row(strategy: .exact, ranks: 8, batch: 16), Row(strategy: .exact, ranks: 2, microBatch: 1, batch: 16)]
        for h in [2, 3] {
            rows += [Row(strategy: .diloco(DiLoCo(h: h, workers: 2)), ranks: 2),
                     Row(strategy: .diloco(DiLoCo(h: h, workers: 2)), ranks: 4),
                     Row(strategy: .diloco(DiLoCo(h: h, workers: 2, shard: false)), ranks: 4, overlap: false)]
        }
        // One worker of two ranks with plain averaging is synchronous training, blocking or overlapped.
        rows += [Row(strategy: .diloco(DiLoCo(h: 3, workers: 1)), ranks: 2),
                 Row(strategy: .diloco(DiLoCo(h: 3, workers: 1, overlapped: true)), ranks: 2)]
        let nesterov = DiLoCo(h: 2, workers: 2, lr: 0.8, momentum: 0.5), overlapped = DiLoCo(h: 2, workers: 2, lr: 0.8, momentum: 0.5, overlapped: true)
        rows += [Row(strategy: .diloco(DiLoCo(h: 2, workers: 2, compression: .bf16)), ranks: 4),
                 Row(strategy: .diloco(nesterov), ranks: 4), Row(strategy: .diloco(overlapped), ranks: 2),
                 Row(strategy: .diloco(DiLoCo(h: 3, workers: 2, overlapped: true)), ranks: 4)]
        rows += [Row(strategy: .replicated, ranks: 2, resumeAt: 3), Row(strategy: .sharded, ranks: 4, resumeAt: 2),
                 Row(strategy: .sharded, ranks: 2, compression: .bf16, workers: 2, microBatch: 1, resumeAt: 3),
                 Row(strategy: .exact, ranks: 2, microBatch: 3, resumeAt: 4),
                 Row(strategy: .diloco(DiLoCo(h: 2, workers: 2)), ranks: 4, resumeAt: 3),
                 Row(strategy: .diloco(DiLoCo(h: 3, workers: 2)), ranks: 2, resumeAt: 3),
                 // Between syncs with outer momentum, and right after an overlapped sync (its sum still to apply).
                 Row(strategy: .diloco(nesterov), ranks: 4, resumeAt: 3), Row(strategy: .diloco(overlapped), ranks: 2, resumeAt: 4)]
        return rows
    }

    /// What a run leaves: every step's loss and gradient norm, the validation losses (rank 0's
    /// metrics) and the model.
    struct Outcome {
        var losses: [Double], gradNorms: [Double], validation: [Double], parameters: [Float]
        /// The strategy's line in the run header.
        var reduction = ""
    }

    func testEveryCombinationMatchesOneProcess() throws {
        let rows = Self.rows
        XCTAssertGreaterThanOrEqual(rows.count, 48)
        let started = Date()
        let reference = try Self.train(Row(strategy: .replicated, ranks: 1))
        XCTAssertEqual(reference.validation.count, Self.steps / Self.evalEvery, "validation losses logged")
        var exactReferences: [Int: Outcome] = [:]
        var dilocoReferences: [String: Outcome] = [:]
        var outcomes: [String: Outcome] = [:]
        for row in rows {
            let outcome: Outcome
            do { outcome = try Self.train(row) } catch { XCTFail("\(row): \(error)"); continue }
            outcomes[row.description] = outcome
            XCTAssertEqual(outcome.losses.count, Self.steps, "\(row): steps logged")
            if row.resumeAt != nil, let twin = outcomes[row.twin] {
                XCTAssertEqual(outcome.losses, twin.losses, "\(row): resumed losses differ from the uninterrupted run's")
                XCTAssertEqual(outcome.validation, twin.validation, "\(row): resumed validation losses differ from the uninterrupted run's")
                let differing = zip(outcome.parameters, twin.parameters).filter { $0 != $1 }.count
                XCTAssertEqual(differing, 0, "\(row): \(differing) of \(twin.parameters.count) parameters differ from the uninterrupted run's")
            }
            switch row.strategy {
            case .exact:
                // Bit-identical at any power-of-two world size, and float32 rounding from allreduce.
                if exactReferences[row.batch] == nil { exactReferences[row.batch] = try Self.train(Row(strategy: .exact, ranks: 1, batch: row.batch)) }
                let exactReference = exactReferences[row.batch]!
                if row.microBatch == nil || row.microBatch == 1 {
                    XCTAssertEqual(outcome.losses, exactReference.losses, "\(row): exact losses")
                    XCTAssertEqual(outcome.gradNorms, exactReference.gradNorms, "\(row): exact gradient norms")
                    XCTAssertEqual(outcome.validation, exactReference.validation, "\(row): exact validation losses")
                    XCTAssertTrue(outcome.parameters == exactReference.parameters, "\(row): exact parameters differ")
                }
                if row.batch == Self.batch { Self.assertClose(outcome, reference, tolerance: 1e-5, "\(row)") }
            case let .diloco(d):
                if dilocoReferences[d.outer] == nil { dilocoReferences[d.outer] = try Self.localSGD(d) }
                // The outer step's bf16 Δ rounds a difference of parameters: 2⁻⁹ of it, far below the parameters' scale.
                Self.assertClose(outcome, dilocoReferences[d.outer]!, tolerance: d.compression == .bf16 ? 1e-4 : 1e-5, "\(row)")
                if d.workers == 1 {
                    // θ_global becomes the one worker's parameters at every sync: synchronous
                    // training. Overlapped, θ_global lags a step after a sync before the last, so
                    // only the last validation loss (a blocking sync) is synchronous training's.
                    var synchronous = reference
                    if d.overlapped { synchronous.validation = Array(synchronous.validation.suffix(1)) }
                    var compared = outcome
                    if d.overlapped { compared.validation = Array(compared.validation.suffix(1)) }
                    Self.assertClose(compared, synchronous, tolerance: 1e-5, "\(row) against synchronous training")
                }
            case .replicated, .sharded:
                if case .sharded = row.strategy, row.compression == .none {
                    XCTAssertEqual(outcome.reduction.contains("shared memory"), row.sharedMemory, "\(row): \(outcome.reduction)")
                }
                if !row.sharedMemory, let twin = outcomes[row.sharedMemoryTwin] {
                    XCTAssertEqual(outcome.losses, twin.losses, "\(row): losses differ from the shared-memory sum's")
                    XCTAssertEqual(outcome.gradNorms, twin.gradNorms, "\(row): gradient norms differ from the shared-memory sum's")
                    let differing = zip(outcome.parameters, twin.parameters).filter { $0 != $1 }.count
                    XCTAssertEqual(differing, 0, "\(row): \(differing) of \(twin.parameters.count) parameters differ from the shared-memory sum's")
                }
                // bf16 gradients on the wire: each rank's gradient and every partial sum rounded
                // to 8 bits of mantissa (measured: losses 3.8e-6, norms 3.0e-4, and parameters
                // 2.8e-3 of the largest, where AdamW's first steps move a near-zero gradient's
                // element by ±lr whichever its rounded sign).
                if row.compression == .bf16 {
                    Self.assertClose(outcome, reference, tolerance: 1e-4, normTolerance: 3e-3, parameterTolerance: 1e-2, "\(row)")
                    XCTAssertNotEqual(outcome.gradNorms, reference.gradNorms, "\(row): bf16 on the wire changed nothing")
                    // Sharded against replicated, both bf16 on the wire: the same bf16 sums, the
                    // norm added in another order (README's bf16 tolerance).
                    if case .sharded = row.strategy, let replicated = outcomes[row.replicatedTwin] {
                        Self.assertClose(outcome, replicated, tolerance: 5e-5, "\(row) against replicated")
                    }
                } else {
                    Self.assertClose(outcome, reference, tolerance: 1e-5, "\(row)")
                }
            }
        }
        print(String(format: "StrategyTableTests: %d combinations in %.1f s", rows.count, Date().timeIntervalSince(started)))
    }

    static func assertClose(_ a: Outcome, _ b: Outcome, tolerance: Double, normTolerance: Double? = nil, parameterTolerance: Double? = nil,
                            _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        func relative(_ x: [Double], _ y: [Double]) -> Double {
            guard x.count == y.count else { return .infinity }
            return zip(x, y).map { abs($0 - $1) / max(abs($1), 1e-30) }.max() ?? 0
        }
        XCTAssertLessThanOrEqual(relative(a.losses, b.losses), tolerance, "\(what): losses", file: file, line: line)
        XCTAssertLessThanOrEqual(relative(a.validation, b.validation), tolerance, "\(what): validation losses", file: file, line: line)
        XCTAssertLessThanOrEqual(relative(a.gradNorms, b.gradNorms), normTolerance ?? tolerance * 10, "\(what): gradient norms", file: file, line: line)
        let scale = Double(b.parameters.map(abs).max() ?? 1)
        let worst = zip(a.parameters, b.parameters).map { Double(abs($0 - $1)) }.max() ?? .infinity
        XCTAssertEqual(a.parameters.count, b.parameters.count, "\(what): parameter count", file: file, line: line)
        XCTAssertLessThanOrEqual(worst / scale, parameterTolerance ?? tolerance * 10, "\(what): parameters", file: file, line: line)
    }

    static var model: ModelConfig { ModelConfig(dim: 32, layers: 2, heads: 2, ffn: 64, seqLen: 32) }

    static func options(microBatch: Int?, reduction: ReductionMode, batch: Int = batch) -> TrainingOptions {
        var o = TrainingOptions(model: model)
        o.batch = batch
        o.steps = steps
        o.lr = 3e-3
        o.warmup = 2
        o.evalEvery = evalEvery
        o.evalBatches = 2
        o.logEvery = 1
        o.checksumEvery = 2
        o.microBatch = microBatch
        o.reduction = reduction
        o.precision = .fp32
        return o
    }

    /// One row through TrainingSetup and TrainingRun, its ranks as threads; resumed rows stop
    /// after `resumeAt` and go on with `--resume`.
    static func train(_ row: Row) throws -> Outcome {
        let out = temporaryDirectory()
        var request = TrainingRequest(options: options(microBatch: row.microBatch, reduction: {
            if case .exact = row.strategy { return .exact }
            return .allReduce
        }(), batch: row.batch))
        request.precision = .fp32
        request.data = [corpus]
        request.out = out
        request.threads = row.workers
        request.peakGFLOPS = 1
        request.progress = false
        request.communication.overlap = row.overlap
        request.communication.compression = row.compression
        request.communication.bucketBytes = 16_000
        request.communication.sharedMemory = row.sharedMemory
        if case .replicated = row.strategy { request.shard = false }
        if case let .diloco(d) = row.strategy {
            request.shard = d.shard
            request.lowCommunication.syncEvery = d.h
            request.lowCommunication.workerSize = row.ranks / d.workers
            request.lowCommunication.compression = d.compression
            request.lowCommunication.lr = d.lr
            request.lowCommunication.momentum = d.momentum
            request.lowCommunication.overlapped = d.overlapped
        }
        var parameters: [Float] = [], reduction = ""
        for phase in row.resumeAt == nil ? [nil] : [row.resumeAt, nil] {
            var r = request
            r.stopAfter = phase
            if phase == nil && row.resumeAt != nil { r.resume = out }
            let models = try InProcessCommunicator.run(ranks: row.ranks) { comm -> ([Float], String) in
                let run = TrainingSetup.run(r, comm: comm)
                try run.run()
                return (run.mode.model.array, run.trainer.strategy.summary)
            }
            (parameters, reduction) = models[0]
        }
        let records = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let steps = records.filter { $0["loss"] != nil }
        return Outcome(losses: steps.compactMap { $0["loss"] as? Double }, gradNorms: steps.compactMap { $0["grad_norm"] as? Double },
                       validation: records.compactMap { $0["val_loss"] as? Double }, parameters: parameters, reduction: reduction)
    }

    /// DiLoCo's reference: each worker a one-process Trainer on its own stream (as the run's
    /// worker w draws it), its clip scaled by √workers; every `h` steps and at the end the
    /// workers' summed Δ = θ_global − θ_worker takes the outer Nesterov step (g = Δ / workers;
    /// b ← μ·b + g; θ_global ← θ_global − lr·(g + μ·b)) and every worker restarts from θ_global.
    /// Overlapped (but at the last step), the step lands after the next inner step instead, and
    /// each worker keeps what it learnt since its Δ left: θ_worker ← θ_global + (θ_worker − Δ's
    /// snapshot). A step's loss is the mean of the workers'; validation evaluates θ_global.
    static func localSGD(_ d: DiLoCo) throws -> Outcome {
        var o = options(microBatch: nil, reduction: .allReduce)
        var outer = OuterSyncOptions(syncEvery: d.h, workers: d.workers)
        outer.compression = d.compression
        outer.lr = d.lr
        outer.momentum = d.momentum
        outer.overlapped = d.overlapped
        o.outer = outer
        o.optimizer.gradClip = outer.workerGradClip(o.optimizer.gradClip)
        let split = try openData([corpus], validation: []).split
        let trainers = try (0..<d.workers).map { w in
            try Trainer(options: o, comm: SingleProcessCommunicator(), split: split, workers: 1,
                        group: WorkerGroup(index: w, count: d.workers, workerOfRank: Array(0..<d.workers)))
        }
        trainers.forEach { $0.initialiseParameters() }
        var global = trainers[0].params.array, momentum = [Float](repeating: 0, count: global.count)
        var losses: [Double] = [], norms: [Double] = [], validation: [Double] = []
        var pending: (sum: [Float], snapshots: [[Float]])? = nil
        func pseudoGradientSum() -> [Float] {
            global.indices.map { i in
                var delta: Float = 0
                for t in trainers {
                    let x = global[i] - t.params.pointer[i]
                    delta += d.compression == .bf16 ? goml_bf16_to_float(goml_bf16_from_float(x)) : x
                }
                return delta
            }
        }
        func outerStep(_ sum: [Float]) {
            let scale = 1 / Float(d.workers), lr = Float(d.lr), mu = Float(d.momentum)
            for i in global.indices {
                let g = sum[i] * scale
                momentum[i] = mu * momentum[i] + g
                global[i] -= lr * (g + mu * momentum[i])
            }
        }
        for step in 1...steps {
            let results = trainers.map { $0.trainStep() }
            losses.append(results.map(\.loss).reduce(0, +) / Double(d.workers))
            norms.append(results[0].gradNorm)
            if let (sum, snapshots) = pending {
                outerStep(sum)
                for (t, snapshot) in zip(trainers, snapshots) {
                    for i in global.indices { t.params.pointer[i] = global[i] + (t.params.pointer[i] - snapshot[i]) }
                }
                pending = nil
            }
            if step % d.h == 0 || step == steps {
                let sum = pseudoGradientSum()
                if d.overlapped && step != steps {
                    pending = (sum, trainers.map { $0.params.array })
                } else {
                    outerStep(sum)
                    for t in trainers { _ = t.params.pointer.update(fromContentsOf: global) }
                }
            }
            if step % evalEvery == 0 || step == steps {
                let parked = trainers[0].params.array
                _ = trainers[0].params.pointer.update(fromContentsOf: global)
                validation.append(trainers[0].evaluate())
                _ = trainers[0].params.pointer.update(fromContentsOf: parked)
            }
        }
        return Outcome(losses: losses, gradNorms: norms, validation: validation, parameters: global)
    }

    static var corpus: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
            + "/data/tinyshakespeare.txt"
    }

    static func temporaryDirectory() -> String {
        let path = NSTemporaryDirectory() + "goml-table-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
