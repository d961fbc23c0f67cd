// The numerical core as a user runs it: verify against the PyTorch fixtures, gradcheck,
// and the error paths of the commands.

import XCTest

final class CommandTests: XCTestCase {
    func testVerifyPassesOnEveryFixture() {
        for (name, quantities) in Harness.fixtureQuantities {
            let r = Harness.goml(["verify", "--reference", "\(Harness.fixtures)/\(name).safetensors"], timeout: 120)
            Harness.assertSuccess(r, "verify \(name)")
            XCTAssertTrue(r.stdout.contains("all \(quantities) quantities within tolerance"), r.stdout)
            XCTAssertFalse(r.stdout.contains("FAIL"), r.stdout)
        }
    }

    func testVerifyFailsWhenAGradientIsWrong() {
        // A 1% error in one gradient tensor must be caught (and so must its effect on the steps).
        let r = Harness.goml(["verify", "--reference", "\(Harness.fixtures)/tiny_clip.safetensors",
                              "--fault-gradient", "layers.1.feed_forward.w3.weight"], timeout: 120)
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertTrue(r.stdout.contains("grad.layers.1.feed_forward.w3.weight") && r.stdout.contains("FAIL"), r.stdout)
    }

    func testGradcheckPassesForBothFFNKinds() {
        let r = Harness.goml(["gradcheck"], timeout: 300)
        Harness.assertSuccess(r, "gradcheck")
        XCTAssertTrue(r.stdout.contains("swiglu") && r.stdout.contains("gelu"), r.stdout)
        XCTAssertFalse(r.stdout.contains("FAIL"), r.stdout)
    }

    func testVerifyRejectsAFileThatIsNotAReference() {
        let dir = Harness.temporaryDirectory("notref")
        FileManager.default.createFile(atPath: dir + "/x.safetensors", contents: Data("not a safetensors file".utf8))
        let r = Harness.goml(["verify", "--reference", dir + "/x.safetensors"], timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("error:") && r.stderr.contains("x.safetensors"), r.output)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one-line error expected: \(r.stderr)")
    }
}
