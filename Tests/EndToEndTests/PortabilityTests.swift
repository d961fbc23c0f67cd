// The float32 path on a CPU with no AVX-512 at all: the release binary under QEMU's user-mode
// emulation of a Haswell (AVX2, FMA; an AVX-512 instruction there is an illegal instruction)
// checks the PyTorch fixtures and trains a few steps; an emulated Nehalem (no AVX) gets one
// line saying the build needs AVX2 and FMA. launch/test installs qemu-user.

import Foundation
import XCTest

final class PortabilityTests: XCTestCase {
    static let qemu = "/usr/bin/qemu-x86_64"

    func run(on cpu: String, _ arguments: [String]) throws -> Harness.Result {
        guard FileManager.default.isExecutableFile(atPath: Self.qemu) else {
            throw XCTSkip("qemu-user is not installed (\(Self.qemu)): apt-get install qemu-user, as launch/test does")
        }
        // Emulation runs ~150× slower than the host: small work, generous timeout.
        return Harness.run(Self.qemu, ["-cpu", cpu, Harness.binary] + arguments, timeout: 600)
    }

    func runOnHaswell(_ arguments: [String]) throws -> Harness.Result { try run(on: "Haswell", arguments) }

    /// Below the floor the Swift code is built for (AVX2 and FMA): one line and status 2, not an
    /// illegal instruction. A Nehalem has SSE4.2 and no AVX.
    func testACPUWithoutAVX2GetsOneLineNotAnIllegalInstruction() throws {
        let r = try run(on: "Nehalem", ["train", "--single", "--config", "tiny", "--steps", "1", "--data", Harness.corpus])
        XCTAssertEqual(r.status, 2, r.output)
        let ours = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("qemu-x86_64: warning") }
        XCTAssertEqual(ours, ["goml-dist: error: this CPU lacks AVX2 and FMA, which goml-dist is built for (x86-64 since Intel Haswell and AMD Zen); to run here, remove cpuFloor's -target-cpu from Package.swift and rebuild"], r.output)
        XCTAssertTrue(r.stdout.isEmpty, r.stdout)
    }

    func testFP32PathVerifiesAndTrainsWithoutAVX512() throws {
        for (name, quantities) in Harness.fixtureQuantities {
            let r = try runOnHaswell(["verify", "--reference", "\(Harness.fixtures)/\(name).safetensors"])
            Harness.assertSuccess(r, "verify \(name) on an emulated Haswell")
            XCTAssertTrue(r.stdout.contains("verify: all \(quantities) quantities within tolerance"), r.stdout)
        }
        // Two steps (the second from updated parameters) of two workers, one sequence of 32 bytes
        // each: the whole training path, at auto precision, without paying for long sequences.
        // (Most of the run is the peak measurement before the first step: 4 products of 512³.)
        let out = Harness.temporaryDirectory("haswell")
        let r = try runOnHaswell(["train", "--single", "--config", "tiny", "--batch", "2", "--seq-len", "32", "--threads", "2", "--steps", "2",
                                  "--eval-every", "0", "--eval-batches", "1", "--log-every", "1", "--data", Harness.corpus, "--out", out])
        Harness.assertSuccess(r, "train on an emulated Haswell")
        XCTAssertTrue(r.stdout.contains("precision fp32 (auto: oneDNN reports avx2, no native bf16 dot products)"), r.stdout)
        XCTAssertTrue(r.stdout.contains("micro-batch 1 sequence(s) × 2 worker(s)"), r.stdout)
        let losses = Harness.losses(out)
        XCTAssertEqual(losses.count, 2, r.stdout)
        XCTAssertTrue(losses.allSatisfy { $0.isFinite && $0 > 0 }, "\(losses)")
    }
}
