// What a resumed or re-started run continues, in-process (ranks as threads): the learning
// rate when --steps changes on resume, the metrics' time axes, and --init-from's weights.

import Foundation
import GomlComm
import GomlCore
import GomlIO
@testable import GomlTrain
import XCTest

final class RunContinuityTests: XCTestCase {
    func request(_ out: String, steps: Int, data: String = StrategyTableTests.corpus) -> TrainingRequest {
        var options = StrategyTableTests.options(microBatch: nil, reduction: .allReduce)
        options.steps = steps
        options.warmup = 2
        var r = TrainingRequest(options: options)
        r.precision = .fp32
        r.data = [data]
        r.out = out
        r.threads = 1
        r.peakGFLOPS = 1
        r.progress = false
        return r
    }

    /// Runs `request` on `ranks` threads; returns rank 0's run.
    @discardableResult
    func train(_ request: TrainingRequest, ranks: Int = 2) throws -> TrainingRun {
        try InProcessCommunicator.run(ranks: ranks) { comm -> TrainingRun in
            let run = TrainingSetup.run(request, comm: comm)
            try run.run()
            return run
        }[0]
    }

    func metrics(_ out: String, _ field: String) throws -> [Double] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?[field] as? Double
        }
    }

    /// Planned for 10 steps, stopped after 6, resumed with --steps 20 (and, separately, 8): the
    /// rate at step 6 is the old schedule's and falls from there to --min-lr; lengthened, step
    /// 7's is no farther from it than one step of the old schedule moves (re-stretching the
    /// cosine made it jump up, from 1.0e-4 to 6.9e-4 in a user's run).
    func testResumingWithOtherStepsContinuesTheLearningRate() throws {
        for newSteps in [20, 8] {
            let out = StrategyTableTests.temporaryDirectory()
            var first = request(out, steps: 10)
            first.stopAfter = 6
            let stopped = try train(first)
            var resumed = request(out, steps: newSteps)
            resumed.resume = out
            let run = try train(resumed)
            XCTAssertEqual(run.trainer.schedule.rate(atStep: 6), stopped.trainer.schedule.rate(atStep: 6), "--steps \(newSteps): the rate where the old run stopped")
            let lr = try metrics(out, "lr")
            XCTAssertEqual(lr.count, newSteps)
            let largestOldStep = (3...10).map { abs(stopped.trainer.schedule.rate(atStep: $0) - stopped.trainer.schedule.rate(atStep: $0 - 1)) }.max()!
            if newSteps > 10 {
                XCTAssertLessThanOrEqual(abs(lr[6] - lr[5]), largestOldStep, "--steps \(newSteps): lr \(lr[5]) at step 6, \(lr[6]) at step 7")
            }
            XCTAssertLessThan(lr[6], lr[5], "--steps \(newSteps): the rate keeps falling")
            XCTAssertEqual(lr.last!, first.options.minLR, accuracy: 1e-12, "--steps \(newSteps): it ends at --min-lr")
            // A resume with the steps it now plans keeps that schedule: the tail was checkpointed.
            let ckpt = try Checkpoint.loadTraining(try Checkpoint.resolve(out))
            XCTAssertEqual(ckpt.progress?.schedule, run.trainer.schedule)
        }
    }

    /// elapsed_s and train_s go on from the checkpoint's, so `plot --x time` never folds back.
    func testTimeAxesContinueAcrossResumes() throws {
        let out = StrategyTableTests.temporaryDirectory()
        var first = request(out, steps: 8)
        first.stopAfter = 4
        try train(first)
        Thread.sleep(forTimeInterval: 0.2)
        var resumed = request(out, steps: 8)
        resumed.resume = out
        try train(resumed)
        for field in ["elapsed_s", "train_s"] {
            let values = try metrics(out, field)
            XCTAssertEqual(values.count, 8)
            XCTAssertEqual(values, values.sorted(), "\(field) must not fall back after the resume: \(values)")
        }
        let curves = try RunCurves.load(directory: out)
        let times = curves.train.map(\.seconds)
        XCTAssertEqual(times, times.sorted(), "the plot's time axis")
    }

    /// --init-from: a new run on other data whose weights at step 0 are the checkpoint's, with
    /// a fresh schedule (its first step at the warmup rate), which then trains.
    func testInitFromStartsANewRunFromACheckpointsWeights() throws {
        let source = StrategyTableTests.temporaryDirectory()
        try train(request(source, steps: 5))
        let ckpt = try Checkpoint.loadTraining(try Checkpoint.resolve(source))

        let other = StrategyTableTests.temporaryDirectory() + "/other.txt"
        let text = String(repeating: "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.\n", count: 200)
        try text.write(toFile: other, atomically: true, encoding: .utf8)
        let out = StrategyTableTests.temporaryDirectory()
        var fine = request(out, steps: 3, data: other)
        fine.initFrom = source
        let initial = try InProcessCommunicator.run(ranks: 2) { comm -> ([Float], String?) in
            let run = TrainingSetup.run(fine, comm: comm)
            run.initialise()
            return (run.trainer.params.array, run.settings.initFrom?.description)
        }
        for (rank, (params, _)) in initial.enumerated() { XCTAssertTrue(params == ckpt.params, "rank \(rank): step 0's weights are the checkpoint's") }
        XCTAssertTrue(initial[0].1?.contains(source) ?? false, "the header names the source: \(initial[0].1 ?? "none")")

        try train(fine)
        let lr = try metrics(out, "lr"), loss = try metrics(out, "loss")
        XCTAssertEqual(lr.first!, fine.options.lr / Double(fine.options.warmup), accuracy: 1e-15, "a fresh schedule")
        XCTAssertTrue(loss.allSatisfy(\.isFinite) && loss.count == 3)
    }
}
