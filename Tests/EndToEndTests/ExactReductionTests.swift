// --reduction exact through real mpirun: stopped on four ranks and resumed on one, the future
// does not change (losses, gradient norms, validation losses, checkpoints, bit for bit); world
// sizes the tree cannot split are refused. (The same bits at every world size, 1 to 8 ranks,
// is StrategyTableTests, in one process, and MultiHostTests across hosts.)

import Foundation
import XCTest

final class ExactReductionTests: XCTestCase {
    func exactRun(_ out: String, extra: [String] = []) -> [String] {
        Harness.tinyTrain(out, steps: 30, evalEvery: 10, extra: ["--reduction", "exact"] + extra)
    }

    func validationTexts(_ out: String) -> [String] { Harness.fieldTexts(out, "val_loss") }
    func gradNormTexts(_ out: String) -> [String] { Harness.fieldTexts(out, "grad_norm") }

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
