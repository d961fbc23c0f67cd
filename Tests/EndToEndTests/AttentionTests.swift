// The blocked causal attention: its backward checked against PyTorch on a sequence longer than
// one attention block (tiny_long, T 161), and a deliberately broken backward caught by verify.

import XCTest

final class AttentionTests: XCTestCase {
    let longFixture = "\(Harness.fixtures)/tiny_long.safetensors"

    func testVerifyPassesOnTheLongSequenceFixture() {
        let r = Harness.goml(["verify", "--reference", longFixture], timeout: 120)
        Harness.assertSuccess(r, "verify tiny_long")
        XCTAssertTrue(r.stdout.contains("C32 L1 H4 F64 T161") && r.stdout.contains("all 50 quantities within tolerance"), r.stdout)
    }

    func testSkippingTheDiagonalBlockInBackwardFailsVerify() {
        // Only the backward is broken: the forward (logits, loss) still matches, the q, k, v gradients do not.
        let r = Harness.goml(["verify", "--reference", longFixture, "--fault-attention", "skip-diagonal-block"], timeout: 120)
        XCTAssertEqual(r.status, 1, r.output)
        let lines = r.stdout.split(separator: "\n")
        for name in ["wq", "wk", "wv"] {
            let line = lines.first { $0.hasPrefix("grad.layers.0.attention.\(name).weight ") }
            XCTAssertTrue(line?.hasSuffix("FAIL") == true, "grad \(name) should fail:\n\(r.stdout)")
        }
        XCTAssertTrue(lines.first { $0.hasPrefix("logits ") }?.hasSuffix("ok") == true, r.stdout)
    }
}
