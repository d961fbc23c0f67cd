// Sharded data parallelism (the default allreduce on several ranks) through real mpirun: the
// replicated run's numbers at bf16 products, bf16 weights on the wire changing no bit,
// resumption at another world size, checkpoints as the replicated run writes them, and one
// host's sum in shared memory giving the reduce-scatter's numbers. (At
// float32, sharded against replicated at every world size, worker count and compression, and
// resumed at the same world size, is StrategyTableTests, in one process.)

import Foundation
import GomlIO
import XCTest

final class ShardingTests: XCTestCase {
    /// 50 kB buckets: tiny's gradient in several, some cut through tensors.
    static let buckets = ["--bucket-mb", "0.05"]

    /// At bf16 products, sharded against replicated at each layout: the sums are the same as at
    /// fp32, but a float32 difference (the norm's order) can move a later operand across a bf16
    /// rounding boundary, and 50 steps compound it. Measured (Ice Lake, emulated bf16): losses
    /// ≤ 6e-6, gradient norms ≤ 2.5e-4, parameters ≤ 5.9e-5 of the largest; as far apart as two
    /// world sizes are at bf16 (replicated np 4 against np 2: 5.2e-6, 1.4e-4, 2.8e-5). Stated
    /// tolerances: 5e-5, 5e-4 and 1e-4.
    func testShardedMatchesReplicatedInBF16() throws {
        try Harness.requireBF16Products()
        // np 4: the matrices through the bf16 wire (across hosts); the others through one host's shared memory.
        for (np, threads) in [(2, 1), (4, 1), (2, 2)] {
            let what = "bf16, np \(np) × \(threads) thread(s)"
            let replicated = Harness.temporaryDirectory("bf16p-replicated-np\(np)-t\(threads)")
            let sharded = Harness.temporaryDirectory("bf16p-sharded-np\(np)-t\(threads)")
            let threads = ["--threads", String(threads)]
            Harness.assertSuccess(Harness.mpirun(np: np, Harness.tinyTrain(replicated, steps: 50, precision: "bf16", extra: Self.buckets + threads + ["--no-shard"])),
                                  "replicated \(what)")
            let wire = np == 4 ? ["--no-shared-memory"] : []
            let s = Harness.mpirun(np: np, Harness.tinyTrain(sharded, steps: 50, precision: "bf16", extra: Self.buckets + threads + wire))
            Harness.assertSuccess(s, "sharded \(what)")
            XCTAssertTrue(s.stdout.contains(np == 4 ? "matrices gathered as bf16" : "copied from this host's shared memory"), s.stdout)
            try Harness.assertClose(sharded, replicated, steps: 50, what, tolerance: 5e-5, normTolerance: 5e-4, parameterTolerance: 1e-4)
        }
    }

    /// At bf16 the matrices travel as bf16 (across hosts: here --no-shared-memory): the values
    /// the products read, so not one bit of the run changes against gathering them as float32,
    /// the checkpoint (each rank's float32 slices) included, at np 2 and at np 4 (slices cut
    /// through tensors) — and fewer bytes travel.
    func testBF16WeightsOnTheWireChangeNoBit() throws {
        try Harness.requireBF16Products()
        for np in [2, 4] {
            let bf16Wire = Harness.temporaryDirectory("bf16-weights-np\(np)"), fp32Wire = Harness.temporaryDirectory("fp32-weights-np\(np)")
            // Replicas compare checksums every 5 steps: a rank's own slices (float32) and the
            // others' (bf16) must agree as the products read them.
            let args = { (out: String) in Harness.tinyTrain(out, precision: "bf16", extra: Self.buckets + ["--ckpt-every", "10", "--checksum-every", "5", "--no-shared-memory"]) }
            Harness.assertSuccess(Harness.mpirun(np: np, args(bf16Wire)), "bf16 weights, np \(np)")
            Harness.assertSuccess(Harness.mpirun(np: np, args(fp32Wire) + ["--gather-fp32-weights"]), "fp32 weights, np \(np)")
            XCTAssertEqual(Harness.lossTexts(bf16Wire).count, 20)
            XCTAssertEqual(Harness.lossTexts(bf16Wire), Harness.lossTexts(fp32Wire), "np \(np): losses, bit for bit")
            XCTAssertEqual(Harness.fieldTexts(bf16Wire, "grad_norm"), Harness.fieldTexts(fp32Wire, "grad_norm"), "np \(np): gradient norms")
            XCTAssertEqual(try Harness.checkpointTensorBytes(bf16Wire), try Harness.checkpointTensorBytes(fp32Wire), "np \(np): checkpoint bytes")
            let parameters = try Harness.finalParameters(bf16Wire)
            XCTAssertGreaterThan(parameters.filter { $0.bitPattern & 0xFFFF != 0 }.count, parameters.count / 2,
                                 "np \(np): the checkpoint holds bf16-rounded weights, not the float32 masters")
        }
        func gatheredMB(_ extra: [String]) throws -> Double {
            let r = Harness.mpirun(np: 2, ["bench", "--config", "tiny", "--precision", "bf16", "--steps", "2", "--warmup", "1",
                                           "--bucket-mb", "0.05", "--no-shared-memory"] + extra)
            Harness.assertSuccess(r, "bench \(extra)")
            return try XCTUnwrap(Harness.lastJSON(r.stdout)["gather_mb_per_step"] as? Double, r.stdout)
        }
        // What one step's gather puts on the wire (the peak in flight depends on when each bucket completes).
        let bf16MB = try gatheredMB([]), fp32MB = try gatheredMB(["--gather-fp32-weights"])
        XCTAssertLessThan(bf16MB, 0.6 * fp32MB, "MB gathered per step: bf16 weights \(bf16MB), float32 \(fp32MB)")
    }

    /// Resumed at another world size (2 → 4, and 4 → one process without MPI): the
    /// uninterrupted run's numbers.
    func testResumeReshards() throws {
        let whole = Harness.temporaryDirectory("whole")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(whole, extra: Self.buckets)), "uninterrupted np 2")
        let grown = Harness.temporaryDirectory("grown"), shrunk = Harness.temporaryDirectory("shrunk")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(grown, extra: Self.buckets + ["--stop-after", "10"])), "first half np 2")
        Harness.assertSuccess(Harness.mpirun(np: 4, Harness.tinyTrain(grown, extra: Self.buckets + ["--resume", grown])), "resumed np 4")
        try Harness.assertClose(grown, whole, steps: 20, "np 2 → 4")
        Harness.assertSuccess(Harness.mpirun(np: 4, Harness.tinyTrain(shrunk, extra: Self.buckets + ["--stop-after", "10"])), "first half np 4")
        Harness.assertSuccess(Harness.goml(Harness.tinyTrain(shrunk, extra: Self.buckets + ["--resume", shrunk, "--single"])), "resumed --single")
        try Harness.assertClose(shrunk, whole, steps: 20, "np 4 → 1")
    }

    /// The sharded run's checkpoint holds the replicated run's parameters and moments (gathered
    /// from the ranks' slices), and `sample` decodes it.
    func testCheckpointHoldsWholeState() throws {
        let replicated = Harness.temporaryDirectory("ckpt-replicated"), sharded = Harness.temporaryDirectory("ckpt-sharded")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(replicated, steps: 10, extra: Self.buckets + ["--no-shard"])), "replicated")
        Harness.assertSuccess(Harness.mpirun(np: 2, Harness.tinyTrain(sharded, steps: 10, extra: Self.buckets)), "sharded")
        let a = try Checkpoint.loadTraining(try Checkpoint.resolve(sharded))
        let b = try Checkpoint.loadTraining(try Checkpoint.resolve(replicated))
        XCTAssertEqual(a.adamStep, 10)
        for (name, x, y) in [("parameters", a.params, b.params), ("m", a.m, b.m), ("v", a.v, b.v)] {
            XCTAssertEqual(x.count, y.count, name)
            let scale = y.map { abs($0) }.max() ?? 1
            XCTAssertGreaterThan(scale, 0, name)
            XCTAssertLessThanOrEqual(Double(Harness.maxAbsoluteDifference(x, y) / scale), 1e-5, name)
        }
        let r = Harness.goml(["sample", "--ckpt", a.path, "--tokens", "20"], timeout: 60)
        Harness.assertSuccess(r, "sample from the sharded checkpoint")
        XCTAssertGreaterThanOrEqual(r.stdout.utf8.count, 20, r.stdout)
    }

    /// Every rank on one host: the gradients are summed and the parameters copied in MPI's
    /// shared-memory windows, not reduce-scattered and all-gathered, and nothing changes: at np 2
    /// (a sum of two in either order) the MPI collectives' bits, checkpoint included, also at
    /// bf16 (the products round the copied float32 slices as they rounded the gathered bf16
    /// ones); at np 4 (MPI adds four along its own tree) their numbers at float32 rounding.
    func testOneHostSumsInSharedMemoryAsTheReduceScatterWould() throws {
        var cases = [(np: 2, precision: "fp32"), (np: 4, precision: "fp32")]
        if (try? Harness.requireBF16Products()) != nil { cases.append((np: 2, precision: "bf16")) }
        for (np, precision) in cases {
            let what = "np \(np) \(precision)"
            let shared = Harness.temporaryDirectory("host-sum-np\(np)"), collectives = Harness.temporaryDirectory("collectives-np\(np)")
            let s = Harness.mpirun(np: np, Harness.tinyTrain(shared, precision: precision, extra: Self.buckets))
            Harness.assertSuccess(s, "shared memory, \(what)")
            XCTAssertTrue(s.stdout.contains("gradients summed from this host's shared memory after backward")
                          && s.stdout.contains("the other ranks' slices copied from this host's shared memory after it"), s.stdout)
            let r = Harness.mpirun(np: np, Harness.tinyTrain(collectives, precision: precision, extra: Self.buckets + ["--no-shared-memory"]))
            Harness.assertSuccess(r, "MPI collectives, \(what)")
            XCTAssertTrue(r.stdout.contains("reduce-scatter overlapped with backward"), r.stdout)
            if np == 2 {
                XCTAssertEqual(Harness.lossTexts(shared).count, 20)
                XCTAssertEqual(Harness.lossTexts(shared), Harness.lossTexts(collectives), "\(what): losses, bit for bit")
                XCTAssertEqual(Harness.fieldTexts(shared, "grad_norm"), Harness.fieldTexts(collectives, "grad_norm"), "\(what): gradient norms")
                XCTAssertEqual(try Harness.checkpointTensorBytes(shared), try Harness.checkpointTensorBytes(collectives), "\(what): checkpoint bytes")
            } else {
                try Harness.assertClose(shared, collectives, steps: 20, what)
            }
        }
    }

    /// A /dev/shm too small for the window (a container's 64 MB against small's 100 MB): one
    /// line says so and how to give it more, and the run goes on through the reduce-scatter,
    /// instead of OpenMPI's first rank failing and the others waiting forever in the call.
    func testADevShmWithoutRoomKeepsTheReduceScatterAndSaysSo() throws {
        let mount = Harness.run("/usr/bin/unshare", ["-m", "sh", "-c", "mount -t tmpfs -o size=64m tmpfs /dev/shm"], timeout: 30)
        guard mount.status == 0 else { throw XCTSkip("a private /dev/shm needs unshare and mount (root): \(mount.stderr)") }
        let mpirun = (["/usr/bin/mpirun", "-np", "2"] + Harness.mpirunOptions + [Harness.binary, "bench", "--config", "small", "--steps", "1", "--warmup", "0"])
            .joined(separator: " ")
        let r = Harness.run("/usr/bin/unshare", ["-m", "sh", "-c", "mount -t tmpfs -o size=64m tmpfs /dev/shm && exec \(mpirun)"], timeout: 120)
        Harness.assertSuccess(r, "bench small, np 2, in 64 MB of /dev/shm")
        XCTAssertTrue(r.stderr.contains("goml-dist: note: /dev/shm has 6") && r.stderr.contains("docker run --shm-size=1g"), r.stderr)
        XCTAssertTrue(r.stdout.contains("reduce-scatter overlapped with backward"), r.stdout)
    }

    /// `--reduction exact` stays unsharded and says why.
    func testExactStaysUnsharded() throws {
        let out = Harness.temporaryDirectory("exact")
        let r = Harness.mpirun(np: 2, Harness.tinyTrain(out, steps: 2, extra: Self.buckets + ["--reduction", "exact"]))
        Harness.assertSuccess(r, "exact np 2")
        XCTAssertTrue(r.stdout.contains("reduction exact, unsharded: its bits come from adding whole gradients along one tree"), r.stdout)
        XCTAssertTrue(r.stdout.contains("nothing sharded"), r.stdout)
    }
}
