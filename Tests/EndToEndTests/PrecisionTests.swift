// --precision: bf16 products checked against the PyTorch fixtures (and a broken bf16 path
// caught), bf16 steps that allocate nothing, world sizes and resume in bf16, and the fallback
// where the CPU has no bf16 dot products (oneDNN's ONEDNN_MAX_CPU_ISA=AVX2 simulates one).

import XCTest

final class PrecisionTests: XCTestCase {
    let withoutBF16 = ["ONEDNN_MAX_CPU_ISA": "AVX2"]

    func testBF16VerifyPassesOnEveryFixture() throws {
        try Harness.requireBF16Products()
        for (name, quantities) in Harness.fixtureQuantities {
            let r = Harness.goml(["verify", "--reference", "\(Harness.fixtures)/\(name).safetensors", "--precision", "bf16"], timeout: 120)
            Harness.assertSuccess(r, "verify --precision bf16 \(name)")
            XCTAssertTrue(r.stdout.contains("precision bf16") && r.stdout.contains("all \(quantities) quantities within tolerance"), r.stdout)
            XCTAssertTrue(r.stdout.contains("1 - cosine"), "bf16 measures expected:\n\(r.stdout)")
        }
    }

    func testABrokenBF16PathFailsVerify() throws {
        try Harness.requireBF16Products()
        for (name, _) in Harness.fixtureQuantities {
            let r = Harness.goml(["verify", "--reference", "\(Harness.fixtures)/\(name).safetensors", "--precision", "bf16",
                                  "--fault-bf16", "wrong-leading-dimension"], timeout: 120)
            XCTAssertEqual(r.status, 1, r.output)
            XCTAssertTrue(r.stdout.contains("grad.layers.0.attention.wq.weight") && r.stdout.contains("FAIL"), r.stdout)
        }
    }

    func testBF16StepsDoNotAllocate() throws {
        try Harness.requireBF16Products()
        let shim = try AllocationTests.compileShim()
        // Two threads: two workers at tiny's batch 8; one worker whose products use both at batch 1 of nano.
        for (config, batch, threads) in [("tiny", "8", "1"), ("tiny", "8", "2"), ("nano", "1", "2")] {
            let r = Harness.run(Harness.binary, ["bench", "--single", "--config", config, "--batch", batch, "--warmup", "3", "--steps", "20",
                                                 "--threads", threads, "--precision", "bf16"],
                                timeout: 300, environment: ["LD_PRELOAD": shim])
            Harness.assertSuccess(r, "bf16 bench, \(config) batch \(batch), \(threads) thread(s)")
            XCTAssertTrue(r.stdout.contains("precision bf16"), r.stdout)
            XCTAssertTrue(r.stdout.contains("heap allocations during the 20 timed steps: 0"), "\(config) batch \(batch), \(threads) thread(s):\n\(r.stdout)")
        }
    }

    /// With fewer sequences than cores, each product is split among the rank's cores (and AdamW
    /// among its threads): the header says so, and not one bit changes against one thread.
    func testBF16ProductsSplitAmongTheRanksCoresChangeNoBit() throws {
        try Harness.requireBF16Products()
        var outs: [String] = []
        for threads in ["1", "2"] {
            let out = Harness.temporaryDirectory("bf16-threads\(threads)")
            // nano at batch 1: one worker, products of 2–3 M multiply-adds (large enough to split).
            let r = Harness.goml(["train", "--single", "--config", "nano", "--batch", "1", "--threads", threads, "--steps", "10",
                                  "--eval-every", "5", "--eval-batches", "2", "--log-every", "1", "--data", Harness.corpus,
                                  "--out", out, "--precision", "bf16"])
            Harness.assertSuccess(r, "bf16, \(threads) thread(s)")
            XCTAssertTrue(r.stdout.contains("1 worker(s), each worker's products on \(threads) thread(s)"), r.stdout)
            outs.append(out)
        }
        XCTAssertEqual(Harness.losses(outs[0]).count, 10)
        XCTAssertEqual(Harness.lossTexts(outs[1]), Harness.lossTexts(outs[0]), "per-step losses, bit for bit")
        XCTAssertEqual(try Harness.checkpointTensorBytes(outs[1]), try Harness.checkpointTensorBytes(outs[0]), "final parameter bytes")
    }

    /// bf16 products are computed per output element in a fixed order whatever the batch split,
    /// so world sizes differ only by the float32 gradient sums, as at fp32: same tolerance.
    func testSingleAndTwoRanksAgreeInBF16() throws {
        try Harness.requireBF16Products()
        let single = Harness.temporaryDirectory("bf16-single")
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(single, steps: 12, precision: "bf16") + ["--single"]), "--single")
        let two = Harness.temporaryDirectory("bf16-np2")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(two, steps: 12, precision: "bf16")), "np 2")
        let reference = Harness.losses(single), losses = Harness.losses(two)
        XCTAssertEqual(reference.count, 12)
        XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(losses, reference), 1e-5, "losses")
        XCTAssertLessThanOrEqual(Harness.maxAbsoluteDifference(try Harness.finalParameters(two), try Harness.finalParameters(single)), 1e-5)
    }

    func testBF16ResumeIsBitwiseAtTheSameWorldSize() throws {
        try Harness.requireBF16Products()
        let a = Harness.temporaryDirectory("bf16-runA")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(a, steps: 12, precision: "bf16")), "run A")
        let b = Harness.temporaryDirectory("bf16-runB")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(b, steps: 12, precision: "bf16", extra: ["--stop-after", "6"])), "run B to 6")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(b, steps: 12, precision: "bf16", extra: ["--resume", b])), "run B resumed")
        XCTAssertEqual(Harness.lossTexts(b), Harness.lossTexts(a), "per-step losses, bit for bit")
        XCTAssertEqual(try Harness.checkpointTensorBytes(b), try Harness.checkpointTensorBytes(a), "final parameter bytes")
    }

    func testResumingWithAnotherPrecisionIsRefused() throws {
        try Harness.requireBF16Products()
        let out = Harness.temporaryDirectory("bf16-to-fp32")
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(out, steps: 4, precision: "bf16", extra: ["--single", "--stop-after", "2"])), "bf16 to step 2")
        let r = Harness.goml(Harness.tinyTrain(out, steps: 4, precision: "fp32", extra: ["--single", "--resume", out]))
        XCTAssertEqual(r.status, 2, r.output)
        XCTAssertTrue(r.stderr.contains("precision bf16 → fp32"), r.output)
    }

    func testWithoutBF16UnitsAutoFallsBackAndBF16IsAnError() {
        let auto = Harness.run(Harness.binary, ["bench", "--single", "--config", "tiny", "--warmup", "1", "--steps", "2"],
                               timeout: 120, environment: withoutBF16)
        Harness.assertSuccess(auto, "auto without bf16 units")
        XCTAssertTrue(auto.stdout.contains("precision fp32 (auto: oneDNN reports avx2, no native bf16 dot products)"), auto.stdout)
        for command in [["train", "--single", "--config", "tiny", "--steps", "2", "--data", Harness.corpus,
                         "--out", Harness.temporaryDirectory("nobf16")],
                        ["bench", "--single", "--config", "tiny", "--steps", "2"],
                        ["verify", "--reference", "\(Harness.fixtures)/tiny_step.safetensors"]] {
            let r = Harness.run(Harness.binary, command + ["--precision", "bf16"], timeout: 120, environment: withoutBF16)
            XCTAssertEqual(r.status, command[0] == "verify" ? 1 : 2, r.output)   // README: 2 from train and bench, 1 from verify
            XCTAssertTrue(r.stderr.contains("--precision bf16 needs AVX-512") && r.stderr.contains("avx2"), r.output)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one-line error expected: \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("step "), "nothing should run: \(r.stdout)")
        }
    }

    /// An AVX-512 CPU without bf16 units (oneDNN capped at avx512_core_vnni simulates one where
    /// there are bf16 units) runs bf16 emulated, says so, and trains alike at each world size.
    func testWithoutBF16UnitsButWithAVX512BF16IsEmulated() throws {
        try Harness.requireBF16Products()
        let cappedISA = ["ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"]
        let single = Harness.temporaryDirectory("emulated-single"), two = Harness.temporaryDirectory("emulated-np2")
        let r = Harness.run(Harness.binary, Harness.tinyTrain(single, steps: 12, precision: "bf16") + ["--single"], timeout: 300, environment: cappedISA)
        Harness.assertSuccess(r, "bf16 emulated, --single")
        XCTAssertTrue(r.stdout.contains("precision bf16 (requested; emulated: oneDNN reports avx512_core_vnni, no native bf16 dot products, so slower than fp32)"), r.stdout)
        let m = Harness.mpirun(np: 2, Harness.tinyTrain(two, steps: 12, precision: "bf16"), mpiOptions: ["-x", "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI"])
        Harness.assertSuccess(m, "bf16 emulated, np 2")
        XCTAssertTrue(m.stdout.contains("precision bf16 (requested; emulated"), m.stdout)
        XCTAssertEqual(Harness.losses(single).count, 12)
        XCTAssertLessThanOrEqual(Harness.maxRelativeDifference(Harness.losses(two), Harness.losses(single)), 1e-5, "losses")
    }

    func testExactReductionRefusesBF16() throws {
        try Harness.requireBF16Products()   // without bf16 units, bf16 is refused for that reason first
        let refused = Harness.goml(["train", "--single", "--config", "tiny", "--steps", "2", "--data", Harness.corpus,
                                    "--out", Harness.temporaryDirectory("exact-bf16"), "--reduction", "exact", "--precision", "bf16"])
        XCTAssertEqual(refused.status, 2, refused.output)
        XCTAssertTrue(refused.stderr.contains("--reduction exact is bit-identical across world sizes in float32 only"), refused.output)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)
    }

    func testExactReductionAutoPicksFP32() {
        let auto = Harness.goml(["train", "--single", "--config", "tiny", "--steps", "2", "--eval-batches", "2", "--data", Harness.corpus,
                                 "--out", Harness.temporaryDirectory("exact-auto"), "--reduction", "exact"])
        Harness.assertSuccess(auto, "exact with auto precision")
        XCTAssertTrue(auto.stdout.contains("precision fp32 (auto: --reduction exact is bit-identical in float32 only)"), auto.stdout)
    }
}
