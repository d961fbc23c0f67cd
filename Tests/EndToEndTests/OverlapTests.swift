// The all-reduce overlapped with backward in buckets, gradient accumulation over micro-batches
// and bf16 compression through real mpirun: micro-batches at bf16 products give the whole
// shard's numbers and lower the peak memory; bf16 on the wire keeps every rank's parameters
// equal and trains; bad values are refused clearly. (At float32, overlapped against after
// backward and accumulated against whole, at every world size and worker count, is
// StrategyTableTests, in one process; TrainingTests runs those paths under mpirun.)

import Foundation
import XCTest

final class OverlapTests: XCTestCase {
    /// Micro-batches of 1 sequence, accumulated (two workers × two micro-batches per rank at np
    /// 2), against the whole shard, at bf16 products, to the tolerance bf16 earns: 5e-5, 1e-4 for gradient norms. A
    /// float32 rounding difference between the two splits can put a value on the other side of a
    /// bf16 rounding boundary when it is next rounded as an operand (2⁻⁸ relative on that
    /// element); these splits' parameters were measured 1.2e-5 apart on a Zen 4 (commit 844997e
    /// pinned fp32 above for it), and on an Ice Lake (emulated bf16) losses and parameters 7e-6,
    /// gradient norms 5.6e-5: a norm sums every element's deviation.
    func testAccumulatedEqualsUnaccumulatedInBF16() throws {
        try Harness.requireBF16Products()
        let whole = Harness.temporaryDirectory("whole-bf16"), micro = Harness.temporaryDirectory("micro-bf16")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(whole, precision: "bf16", extra: ["--threads", "1"])), "whole shard, bf16")
        let m = Harness.mpirun(np: 2, Harness.tinyTrain(micro, precision: "bf16", extra: ["--threads", "2", "--micro-batch", "1", "--bucket-mb", "0.05"]))
        Harness.assertSuccess(m, "micro-batches, bf16")
        XCTAssertTrue(m.stdout.contains("micro-batch 1 sequence(s) × 2 worker(s)") && m.stdout.contains("precision bf16"), m.stdout)
        try Harness.assertClose(micro, whole, steps: 20, "accumulated, bf16", tolerance: 5e-5, normTolerance: 1e-4)
        let single = Harness.temporaryDirectory("micro-single-bf16")
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(single, precision: "bf16", extra: ["--single", "--micro-batch", "2"])), "--single micro-batches, bf16")
        try Harness.assertClose(single, whole, steps: 20, "accumulated --single, bf16", tolerance: 5e-5, normTolerance: 1e-4)
    }

    /// Micro-batches bound activation memory: nano at batch 16 in one worker, whole (16
    /// sequences at once) and in micro-batches of 1. The accumulated run's peak resident memory
    /// (the bench's own VmHWM: a spawned child's rusage would count this test process's peak)
    /// must be lower by at least 3/4 of the activation difference the run headers state, which
    /// must be well above page noise (the arena is written in full at start, so all of it is
    /// resident; the quarter left covers allocator and page noise of a few MB).
    func testMicroBatchesLowerPeakMemoryByTheActivations() throws {
        func run(_ extra: [String]) throws -> (activationMB: Int, peakMB: Double) {
            let r = Harness.goml(["bench", "--single", "--config", "nano", "--batch", "16", "--precision", "fp32",
                                  "--threads", "1", "--warmup", "1", "--steps", "1"] + extra)
            Harness.assertSuccess(r, "bench \(extra)")
            let after = try XCTUnwrap(r.stdout.range(of: "activations "), r.stdout).upperBound
            let activationMB = try XCTUnwrap(Int(r.stdout[after...].prefix { $0.isNumber }), r.stdout)
            let json = try XCTUnwrap(r.stdout.split(separator: "\n").last { $0.hasPrefix("{") }, r.stdout)
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            return (activationMB, try XCTUnwrap(report["peak_resident_mb"] as? Double, "\(report)"))
        }
        let whole = try run([]), micro = try run(["--micro-batch", "1"])
        let predicted = Double(whole.activationMB - micro.activationMB)
        XCTAssertGreaterThan(predicted, 30, "headers: whole \(whole.activationMB) MB, micro-batches \(micro.activationMB) MB of activations")
        XCTAssertGreaterThanOrEqual(whole.peakMB - micro.peakMB, 0.75 * predicted,
                                    "peak resident memory whole \(whole.peakMB) MB, micro-batches \(micro.peakMB) MB; the headers predict \(predicted) MB less")
    }

    /// bf16 on the wire: every rank keeps identical parameters (the run compares checksums
    /// every 5 steps and stops on a difference), the loss falls, and the numbers differ from float32's.
    func testCompressedGradientsAgreeAcrossRanksAndTrain() throws {
        let out = Harness.temporaryDirectory("bf16"), plain = Harness.temporaryDirectory("bf16-plain")
        let args = ["--grad-compression", "bf16", "--checksum-every", "5", "--bucket-mb", "0.05", "--lr", "3e-3", "--warmup", "5"]
        let r = Harness.mpirun(np: 4, Harness.tinyTrain(out, steps: 40, extra: args))
        Harness.assertSuccess(r, "bf16 np 4")
        XCTAssertTrue(r.stdout.contains("bf16 on the wire, AdamW on each rank's 1/4"), r.stdout)
        let losses = Harness.losses(out)
        XCTAssertEqual(losses.count, 40)
        XCTAssertLessThan(losses.suffix(5).reduce(0, +) / 5, losses.prefix(5).reduce(0, +) / 5 - 0.3, "loss did not fall: \(losses)")
        Harness.assertSuccess(Harness.mpirun(np: 4, Harness.tinyTrain(plain, steps: 40, extra: ["--checksum-every", "5", "--lr", "3e-3", "--warmup", "5"])), "float32 np 4")
        XCTAssertNotEqual(Harness.lossTexts(out), Harness.lossTexts(plain), "bf16 compression changed nothing")
        XCTAssertLessThan(Harness.maxRelativeDifference(losses, Harness.losses(plain)), 0.05)
        XCTAssertLessThan(Harness.maxRelativeDifference(Harness.gradNorms(out), Harness.gradNorms(plain)), 0.05, "gradient norms")
    }

    func testBadCommunicationOptionsAreRefused() {
        let cases: [([String], String)] = [
            (["--grad-compression", "fp8"], "unknown --grad-compression 'fp8': use none or bf16"),
            (["--bucket-mb", "0"], "--bucket-mb is 0.0; it must lie in (0, 1024]"),
            (["--micro-batch", "3"], "each rank's 4 sequences must split into micro-batches of 3"),
            (["--grad-compression", "bf16", "--reduction", "exact"], "cannot be used with --reduction exact"),
        ]
        // At once: each job mostly waits for mpirun to end it.
        let results = Harness.concurrently(cases) { c in Harness.mpirun(np: 2, Harness.tinyTrain(Harness.temporaryDirectory("bad"), extra: c.0), timeout: 60) }
        for ((extra, message), r) in zip(cases, results) {
            XCTAssertFalse(r.timedOut, "\(extra)")
            XCTAssertEqual(r.status, 2, "\(extra):\n\(r.output)")
            XCTAssertTrue(r.stderr.contains(message), "\(extra):\n\(r.output)")
        }
    }
}
