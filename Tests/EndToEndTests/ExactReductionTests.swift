// --reduction exact: the same bits at any world size (losses, gradient norms, validation
// losses, checkpoints), resuming on another world size without changing the future, and world
// sizes the tree cannot split refused.

import Foundation
import XCTest

final class ExactReductionTests: XCTestCase {
    func exactRun(_ out: String, extra: [String] = []) -> [String] {
        ["train", "--config", "tiny", "--batch", "8", "--steps", "30", "--eval-every", "10", "--eval-batches", "2",
         "--log-every", "10", "--reduction", "exact", "--data", Harness.corpus, "--out", out] + extra
    }

    func validationTexts(_ out: String) -> [String] { Harness.fieldTexts(out, "val_loss") }
    func gradNormTexts(_ out: String) -> [String] { Harness.fieldTexts(out, "grad_norm") }

    func testEveryWorldSizeGivesTheSameBits() throws {
        let single = Harness.temporaryDirectory("exact-single")
        Harness.assertSuccess(Harness.goml(exactRun(single) + ["--single"]), "--single")
        let losses = Harness.lossTexts(single), validation = validationTexts(single), norms = gradNormTexts(single)
        let tensors = try Harness.checkpointTensorBytes(single)
        XCTAssertEqual(losses.count, 30)
        XCTAssertEqual(validation.count, 3)
        XCTAssertEqual(norms.count, 30)
        for np in [1, 2, 4, 8] {
            let out = Harness.temporaryDirectory("exact-np\(np)")
            Harness.assertSuccess(Harness.mpirun(np: np, exactRun(out)), "np \(np)")
            XCTAssertEqual(Harness.lossTexts(out), losses, "losses at np \(np)")
            XCTAssertEqual(gradNormTexts(out), norms, "gradient norms at np \(np)")
            XCTAssertEqual(validationTexts(out), validation, "validation losses at np \(np)")
            XCTAssertEqual(try Harness.checkpointTensorBytes(out), tensors, "checkpoint tensors at np \(np)")
        }
    }

    func testStoppedOnFourRanksAndResumedOnOneMatchesTheFourRankRun() throws {
        let four = Harness.temporaryDirectory("exact-four")
        Harness.assertSuccess(Harness.mpirun(np: 4, exactRun(four)), "uninterrupted 4 ranks")
        let resumed = Harness.temporaryDirectory("exact-resumed")
        Harness.assertSuccess(Harness.mpirun(np: 4, exactRun(resumed, extra: ["--stop-after", "15"])), "4 ranks to step 15")
        Harness.assertSuccess(Harness.goml(exactRun(resumed, extra: ["--resume", resumed, "--single"])), "1 rank from step 15")
        XCTAssertEqual(Harness.lossTexts(resumed), Harness.lossTexts(four))
        XCTAssertEqual(gradNormTexts(resumed), gradNormTexts(four))
        XCTAssertEqual(validationTexts(resumed), validationTexts(four))
        XCTAssertEqual(try Harness.checkpointTensorBytes(resumed), try Harness.checkpointTensorBytes(four))
    }

    func testWorldSizesThatDoNotAlignWithTheTreeAreRefused() {
        let r = Harness.mpirun(np: 3, exactRun(Harness.temporaryDirectory("exact-np3"), extra: ["--batch", "6"]), timeout: 60)
        XCTAssertEqual(r.status, 2, r.output)
        XCTAssertTrue(r.stderr.contains("power-of-two world size"), r.output)
    }
}
