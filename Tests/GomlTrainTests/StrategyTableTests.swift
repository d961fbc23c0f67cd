// Every way of splitting a step against one process, with ranks as threads of this process
// (InProcessCommunicator): strategy × overlap × compression × workers × micro-batch × world
// size, some rows resumed half-way. Each row goes through TrainingSetup and TrainingRun as
// `train` does, and must give the one-process run's losses and parameters at the README's
// tolerances; a resumed row must equal its uninterrupted twin bit for bit. DiLoCo rows are held
// against an outer step computed here, from one-process workers.

import Foundation
import GomlComm
import GomlCore
@testable import GomlTrain
import XCTest

final class StrategyTableTests: XCTestCase {
    enum Strategy: CustomStringConvertible {
        case replicated, sharded, exact
        /// DiLoCo with `workers` workers syncing every `h` steps, each worker sharded unless `shard` is false.
        case diloco(h: Int, workers: Int, shard: Bool, compression: GradientCompression)
        var description: String {
            switch self {
            case .replicated: "replicated"
            case .sharded: "sharded"
            case .exact: "exact"
            case let .diloco(h, workers, shard, compression): "diloco H \(h) × \(workers) workers\(shard ? "" : " unsharded")\(compression == .bf16 ? " bf16 Δ" : "")"
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
        var description: String {
            "\(strategy), \(ranks) rank(s), \(overlap ? "overlapped" : "after backward"), \(compression == .none ? "float32" : "bf16") gradients, "
                + "\(workers) worker(s), micro-batch \(microBatch.map(String.init) ?? "whole")" + (resumeAt.map { ", resumed after step \($0)" } ?? "")
        }
        /// The same row, uninterrupted.
        var twin: String { var r = self; r.resumeAt = nil; return r.description }
    }

    static let steps = 6
    static let batch = 12

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
        for ranks in [1, 2, 4] {
            rows += [Row(strategy: .exact, ranks: ranks), Row(strategy: .exact, ranks: ranks, microBatch: 3)]
        }
        for h in [2, 3] {
            rows += [Row(strategy: .diloco(h: h, workers: 2, shard: true, compression: .none), ranks: 2),
                     Row(strategy: .diloco(h: h, workers: 2, shard: true, compression: .none), ranks: 4),
                     Row(strategy: .diloco(h: h, workers: 2, shard: false, compression: .none), ranks: 4, overlap: false)]
        }
        rows.append(Row(strategy: .diloco(h: 2, workers: 2, shard: true, compression: .bf16), ranks: 4))
        rows += [Row(strategy: .replicated, ranks: 2, resumeAt: 3), Row(strategy: .sharded, ranks: 4, resumeAt: 2),
                 Row(strategy: .sharded, ranks: 2, compression: .bf16, workers: 2, microBatch: 1, resumeAt: 3),
                 Row(strategy: .exact, ranks: 2, microBatch: 3, resumeAt: 4),
                 Row(strategy: .diloco(h: 2, workers: 2, shard: true, compression: .none), ranks: 4, resumeAt: 3),
                 Row(strategy: .diloco(h: 3, workers: 2, shard: true, compression: .none), ranks: 2, resumeAt: 3)]
        return rows
    }

    /// What a run leaves: every step's loss and gradient norm (rank 0's metrics) and the model.
    struct Outcome {
        var losses: [Double], gradNorms: [Double], parameters: [Float]
    }

    func testEveryCombinationMatchesOneProcess() throws {
        let rows = Self.rows
        XCTAssertGreaterThanOrEqual(rows.count, 48)
        let started = Date()
        let reference = try Self.train(Row(strategy: .replicated, ranks: 1))
        let exactReference = try Self.train(Row(strategy: .exact, ranks: 1))
        var dilocoReferences: [String: Outcome] = [:]
        var outcomes: [String: Outcome] = [:]
        for row in rows {
            let outcome: Outcome
            do { outcome = try Self.train(row) } catch { XCTFail("\(row): \(error)"); continue }
            outcomes[row.description] = outcome
            XCTAssertEqual(outcome.losses.count, Self.steps, "\(row): steps logged")
            if row.resumeAt != nil, let twin = outcomes[row.twin] {
                XCTAssertEqual(outcome.losses, twin.losses, "\(row): resumed losses differ from the uninterrupted run's")
                let differing = zip(outcome.parameters, twin.parameters).filter { $0 != $1 }.count
                XCTAssertEqual(differing, 0, "\(row): \(differing) of \(twin.parameters.count) parameters differ from the uninterrupted run's")
            }
            switch row.strategy {
            case .exact:
                // Bit-identical at any power-of-two world size, and float32 rounding from allreduce.
                if row.microBatch == nil || row.microBatch == 1 {
                    XCTAssertEqual(outcome.losses, exactReference.losses, "\(row): exact losses")
                    XCTAssertTrue(outcome.parameters == exactReference.parameters, "\(row): exact parameters differ")
                }
                Self.assertClose(outcome, reference, tolerance: 1e-5, "\(row)")
            case let .diloco(h, workers, _, compression):
                let key = "\(h) \(workers) \(compression)"
                if dilocoReferences[key] == nil { dilocoReferences[key] = try Self.localSGD(h: h, workers: workers, compression: compression) }
                // The outer step's bf16 Δ rounds a difference of parameters: 2⁻⁹ of it, far below the parameters' scale.
                Self.assertClose(outcome, dilocoReferences[key]!, tolerance: compression == .bf16 ? 1e-4 : 1e-5, "\(row)")
            case .replicated, .sharded:
                // bf16 gradients on the wire: each rank's gradient and every partial sum rounded
                // to 8 bits of mantissa (measured: losses 3.8e-6, norms 3.0e-4, and parameters
                // 2.8e-3 of the largest, where AdamW's first steps move a near-zero gradient's
                // element by ±lr whichever its rounded sign).
                if row.compression == .bf16 {
                    Self.assertClose(outcome, reference, tolerance: 1e-4, normTolerance: 3e-3, parameterTolerance: 1e-2, "\(row)")
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
        XCTAssertLessThanOrEqual(relative(a.gradNorms, b.gradNorms), normTolerance ?? tolerance * 10, "\(what): gradient norms", file: file, line: line)
        let scale = Double(b.parameters.map(abs).max() ?? 1)
        let worst = zip(a.parameters, b.parameters).map { Double(abs($0 - $1)) }.max() ?? .infinity
        XCTAssertEqual(a.parameters.count, b.parameters.count, "\(what): parameter count", file: file, line: line)
        XCTAssertLessThanOrEqual(worst / scale, parameterTolerance ?? tolerance * 10, "\(what): parameters", file: file, line: line)
    }

    static var model: ModelConfig { ModelConfig(dim: 32, layers: 2, heads: 2, ffn: 64, seqLen: 32) }

    static func options(microBatch: Int?, reduction: ReductionMode) -> TrainingOptions {
        var o = TrainingOptions(model: model)
        o.batch = batch
        o.steps = steps
        o.lr = 3e-3
        o.warmup = 2
        o.evalEvery = 0
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
        }()))
        request.precision = .fp32
        request.data = [corpus]
        request.out = out
        request.threads = row.workers
        request.peakGFLOPS = 1
        request.progress = false
        request.communication.overlap = row.overlap
        request.communication.compression = row.compression
        request.communication.bucketBytes = 16_000
        if case .replicated = row.strategy { request.shard = false }
        if case let .diloco(h, workers, shard, compression) = row.strategy {
            request.shard = shard
            request.lowCommunication.syncEvery = h
            request.lowCommunication.workerSize = row.ranks / workers
            request.lowCommunication.compression = compression
        }
        var parameters: [Float] = []
        for phase in row.resumeAt == nil ? [nil] : [row.resumeAt, nil] {
            var r = request
            r.stopAfter = phase
            if phase == nil && row.resumeAt != nil { r.resume = out }
            let models = try InProcessCommunicator.run(ranks: row.ranks) { comm -> [Float] in
                let run = TrainingSetup.run(r, comm: comm)
                try run.run()
                return run.mode.model.array
            }
            parameters = models[0]
        }
        let records = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let steps = records.filter { $0["loss"] != nil }
        return Outcome(losses: steps.compactMap { $0["loss"] as? Double }, gradNorms: steps.compactMap { $0["grad_norm"] as? Double },
                       parameters: parameters)
    }

    /// DiLoCo's reference: each worker a one-process Trainer on its own stream (as the run's
    /// worker w draws it), its clip scaled by √workers; every `h` steps and at the end the
    /// model becomes the workers' mean (outer lr 1, momentum 0) and every worker restarts from
    /// it. A step's loss is the mean of the workers'.
    static func localSGD(h: Int, workers: Int, compression: GradientCompression) throws -> Outcome {
        var o = options(microBatch: nil, reduction: .allReduce)
        var outer = OuterSyncOptions(syncEvery: h, workers: workers)
        outer.compression = compression
        o.outer = outer
        o.optimizer.gradClip = outer.workerGradClip(o.optimizer.gradClip)
        let split = try openData([corpus], validation: []).split
        let trainers = try (0..<workers).map { w in
            try Trainer(options: o, comm: SingleProcessCommunicator(), split: split, workers: 1,
                        group: WorkerGroup(index: w, count: workers, workerOfRank: Array(0..<workers)))
        }
        trainers.forEach { $0.initialiseParameters() }
        var global = trainers[0].params.array, losses: [Double] = [], norms: [Double] = []
        for step in 1...steps {
            let results = trainers.map { $0.trainStep() }
            losses.append(results.map(\.loss).reduce(0, +) / Double(workers))
            norms.append(results[0].gradNorm)
            guard step % h == 0 || step == steps else { continue }
            for i in global.indices {
                var delta: Float = 0
                for t in trainers {
                    let d = global[i] - t.params.pointer[i]
                    delta += compression == .bf16 ? Float(bitPattern: UInt32(bf16(d)) << 16) : d
                }
                global[i] -= delta * (1 / Float(workers))
            }
            for t in trainers { _ = t.params.pointer.update(fromContentsOf: global) }
        }
        return Outcome(losses: losses, gradNorms: norms, parameters: global)
    }

    /// Round to nearest even bfloat16 bits (goml_bfloat16.h's rule, finite values).
    static func bf16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
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
