// Low-communication training (DiLoCo, --sync-every): one worker with plain averaging is
// synchronous training, workers drift apart between syncs and agree right after, a resumed
// run continues bit for bit, and bad layouts or options are one-line errors.

import Foundation
import XCTest

final class LowCommunicationTests: XCTestCase {
    func tinyRun(_ out: String, steps: Int = 20, extra: [String] = []) -> [String] {
        ["train", "--config", "tiny", "--batch", "8", "--steps", String(steps), "--eval-every", "10", "--log-every", "10",
         "--precision", "fp32", "--data", Harness.corpus, "--out", out, "--no-progress"] + extra
    }

    func values(_ out: String, _ field: String) -> [Double] { Harness.fieldTexts(out, field).compactMap(Double.init) }

    /// One worker holding both ranks (sharded inside it), outer lr 1 and no momentum: θ_global
    /// becomes the worker's parameters at every sync, so losses, norms, validation losses (at
    /// steps 10 and 20, both syncs) and the final model are synchronous training's to float32 rounding.
    func testOneWorkerWithPlainAveragingIsSynchronousTraining() throws {
        try assertOneWorkerIsSynchronous(overlapped: false)
    }

    /// The same overlapped: the outer update lands one step late under that step's progress, so
    /// the worker's parameters (losses, norms, final model) still follow synchronous training;
    /// only θ_global at step 10 lags (the update started there lands at step 11), so the
    /// validation loss is compared at the last step, which syncs blocking.
    func testOneWorkerOverlappedIsSynchronousTraining() throws {
        try assertOneWorkerIsSynchronous(overlapped: true)
    }

    func assertOneWorkerIsSynchronous(overlapped: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let synchronous = Harness.temporaryDirectory("diloco-sync"), oneWorker = Harness.temporaryDirectory("diloco-one-worker")
        Harness.assertSuccess(Harness.mpirun(np: 2, tinyRun(synchronous)), "synchronous", file: file, line: line)
        let r = Harness.mpirun(np: 2, tinyRun(oneWorker, extra: ["--sync-every", "5", "--worker-size", "2", "--outer-lr", "1", "--outer-momentum", "0"]
                                                                + (overlapped ? ["--overlap-outer"] : [])))
        Harness.assertSuccess(r, "one worker", file: file, line: line)
        XCTAssertTrue(r.stdout.contains("mode diloco: 1 worker(s) × 2 rank(s), sync every 5 steps"), r.stdout, file: file, line: line)
        XCTAssertTrue(r.stdout.contains("each worker clips its gradient norm at 1: --grad-clip × √1"), r.stdout, file: file, line: line)
        for field in ["loss", "grad_norm", "val_loss"] {
            var a = values(oneWorker, field), b = values(synchronous, field)
            XCTAssertEqual(a.count, field == "val_loss" ? 2 : 20, field, file: file, line: line)
            XCTAssertEqual(a.count, b.count, field, file: file, line: line)
            if overlapped && field == "val_loss" { a = Array(a.suffix(1)); b = Array(b.suffix(1)) }
            XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(a, b), 1e-5, field, file: file, line: line)
        }
        let p = try Harness.finalParameters(oneWorker), q = try Harness.finalParameters(synchronous)
        XCTAssertEqual(p.count, q.count, file: file, line: line)
        XCTAssertLessThanOrEqual(Double(Harness.maxAbsoluteDifference(p, q) / (q.map { abs($0) }.max() ?? 1)), 1e-5, "final parameters",
                                 file: file, line: line)
    }

    /// Two workers of two ranks each (sharded inside), checksums after every step: the
    /// workers' parameters differ between syncs (their own data) and are equal right after one.
    func testWorkersDivergeBetweenSyncsAndAgreeAfter() throws {
        let out = Harness.temporaryDirectory("diloco-diverge")
        let r = Harness.mpirun(np: 4, tinyRun(out, steps: 12, extra: ["--sync-every", "4", "--worker-size", "2", "--checksum-every", "1",
                                                                      "--outer-lr", "0.8", "--outer-momentum", "0.5"]))
        Harness.assertSuccess(r, "two workers")
        XCTAssertTrue(r.stdout.contains("mode diloco: 2 worker(s) × 2 rank(s), sync every 4 steps"), r.stdout)
        // The header prints the clip the workers' optimizers were given: --grad-clip 1 × √2.
        XCTAssertTrue(r.stdout.contains("each worker clips its gradient norm at 1.41421: --grad-clip × √2"), r.stdout)
        let records = Harness.metrics(out).filter { $0["step"] != nil }
        XCTAssertEqual(records.count, 12)
        for record in records {
            let step = record["step"] as? Int ?? 0
            let sums = record["worker_checksums"] as? [String] ?? []
            XCTAssertEqual(sums.count, 2, "step \(step)")
            if step % 4 == 0 {
                XCTAssertEqual(sums.first, sums.last, "workers disagree right after the sync at step \(step)")
                XCTAssertEqual(record["outer_bytes"] as? Int, 4 * 132_224, "step \(step)")
            } else {
                XCTAssertNotEqual(sums.first, sums.last, "workers did not diverge at step \(step)")
                XCTAssertNil(record["outer_bytes"], "no outer step at step \(step)")
            }
        }
    }

    /// Δ as bfloat16 on the wire: half the bytes per outer step, every worker restarts from the
    /// same θ_global (the run's own check, every sync), and the model is float32's to bf16
    /// rounding, not equal to it (so the sum really travelled as bf16).
    func testBF16PseudoGradientHalvesTheBytes() throws {
        let float32 = Harness.temporaryDirectory("diloco-f32"), bf16 = Harness.temporaryDirectory("diloco-bf16")
        let options = ["--sync-every", "4", "--worker-size", "1", "--checksum-every", "4"]
        Harness.assertSuccess(Harness.mpirun(np: 2, tinyRun(float32, extra: options)), "float32 Δ")
        let r = Harness.mpirun(np: 2, tinyRun(bf16, extra: options + ["--outer-compression", "bf16"]))
        Harness.assertSuccess(r, "bf16 Δ")
        XCTAssertTrue(r.stdout.contains("Δ bf16 on the wire: 0.26 MB per rank per outer step"), r.stdout)
        XCTAssertEqual(values(bf16, "outer_bytes"), Array(repeating: 2 * 132_224, count: 5))
        let p = try Harness.finalParameters(bf16), q = try Harness.finalParameters(float32)
        let difference = Double(Harness.maxAbsoluteDifference(p, q) / (q.map { abs($0) }.max() ?? 1))
        XCTAssertGreaterThan(difference, 0, "bf16 Δ gave float32's parameters bit for bit")
        XCTAssertLessThanOrEqual(difference, 1e-2, "bf16 Δ strayed from float32's")
    }

    /// The run's own check: a worker that does not restart from θ_global after an outer step
    /// (hidden fault) stops the job with one line naming the workers.
    func testWorkerThatKeepsItsParametersAfterASyncStopsTheJob() {
        let out = Harness.temporaryDirectory("diloco-no-restart")
        let r = Harness.mpirun(np: 2, tinyRun(out, steps: 8, extra: ["--sync-every", "4", "--worker-size", "1", "--checksum-every", "4",
                                                                     "--fault-outer-no-restart"]))
        XCTAssertNotEqual(r.status, 0, r.output)
        let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
        XCTAssertEqual(errorLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("workers 0 and 1 hold different parameters right after the outer step at step 4"), r.stderr)
    }

    /// Stopped between two syncs (step 6 of H 4) and resumed at the same layout (two workers of
    /// two ranks, momentum on): the same losses and the same checkpoint bytes as one run.
    func testResumeBetweenSyncsIsBitwise() throws {
        try assertResumeIsBitwise(np: 4, options: ["--sync-every", "4", "--worker-size", "2", "--outer-lr", "0.8", "--outer-momentum", "0.5"],
                                  stopAfter: 6)
    }

    /// Overlapped, stopped right after a sync (step 8 of H 4): the checkpoint holds the outer
    /// sum still to be applied, and the resumed run applies it after step 9 as the whole run does.
    func testOverlappedResumeWithAnOuterStepInFlightIsBitwise() throws {
        try assertResumeIsBitwise(np: 2, options: ["--sync-every", "4", "--worker-size", "1", "--outer-lr", "0.8", "--outer-momentum", "0.5",
                                                   "--overlap-outer"], stopAfter: 8)
    }

    func assertResumeIsBitwise(np: Int, options: [String], stopAfter: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let whole = Harness.temporaryDirectory("diloco-whole"), resumed = Harness.temporaryDirectory("diloco-resumed")
        Harness.assertSuccess(Harness.mpirun(np: np, tinyRun(whole, extra: options)), "uninterrupted", file: file, line: line)
        Harness.assertSuccess(Harness.mpirun(np: np, tinyRun(resumed, extra: options + ["--stop-after", String(stopAfter)])), "first part",
                              file: file, line: line)
        let r = Harness.mpirun(np: np, tinyRun(resumed, extra: options + ["--resume", resumed]))
        Harness.assertSuccess(r, "resumed", file: file, line: line)
        XCTAssertTrue(r.stdout.contains("at step \(stopAfter)"), r.stdout, file: file, line: line)
        XCTAssertEqual(Harness.lossTexts(resumed), Harness.lossTexts(whole), file: file, line: line)
        XCTAssertEqual(Harness.fieldTexts(resumed, "val_loss"), Harness.fieldTexts(whole, "val_loss"), file: file, line: line)
        for name in ["ckpt-0000020.safetensors", "ckpt-0000020.state.safetensors", "ckpt-0000020.outer.safetensors"] {
            let a = FileManager.default.contents(atPath: whole + "/" + name), b = FileManager.default.contents(atPath: resumed + "/" + name)
            XCTAssertNotNil(a, name, file: file, line: line)
            XCTAssertEqual(a, b, "\(name) differs after the resume", file: file, line: line)
        }
    }

    /// Each bad option or layout: one error line naming it, non-zero exit, no training.
    func testBadOptionsAreOneLineErrors() {
        let cases: [(np: Int, extra: [String], expected: String)] = [
            (1, ["--sync-every", "0"], "--sync-every is 0; it must be a positive integer"),
            (2, ["--sync-every", "4", "--worker-size", "3"], "--worker-size 3 does not divide the 2 ranks"),
            (2, ["--sync-every", "4", "--workers-per-host", "3"], "--workers-per-host 3 does not divide the ranks on every host"),
            (2, ["--sync-every", "4", "--reduction", "exact"], "--reduction exact cannot run with --sync-every 4"),
            (1, ["--sync-every", "4", "--outer-momentum", "1"], "--outer-momentum is 1.0; it must lie in [0, 1)"),
        ]
        for (np, extra, expected) in cases {
            let out = Harness.temporaryDirectory("diloco-bad")
            let r = Harness.mpirun(np: np, tinyRun(out, steps: 4, extra: extra))
            XCTAssertNotEqual(r.status, 0, "\(extra): \(r.output)")
            let errorLines = r.stderr.split(separator: "\n").filter { $0.contains("goml-dist: error") }
            XCTAssertEqual(errorLines.count, 1, "\(extra): one error line from the whole job, got:\n\(r.stderr)")
            XCTAssertTrue(r.stderr.contains(expected), "\(extra): \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("step      1"), "\(extra) trained: \(r.stdout)")
        }
    }
}
