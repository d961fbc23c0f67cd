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

    /// `train --help` as a user reads it: at most 40 options, in groups, defaults shown, the
    /// internal and fault flags only under --help-hidden; --version names the build.
    func testTrainHelpIsGroupedAndShort() {
        let help = Harness.goml(["train", "--help"], timeout: 60)
        Harness.assertSuccess(help, "train --help")
        let lines = help.stdout.split(separator: "\n").map(String.init)
        let options = lines.filter { $0.range(of: #"^\s+(-[a-z], )?--[a-z]"#, options: .regularExpression) != nil }
        XCTAssertLessThanOrEqual(options.count, 40, "visible options:\n\(options.joined(separator: "\n"))")
        for group in ["MODEL:", "DATA:", "OPTIMIZATION:", "PARALLELISM:", "PRECISION:", "CHECKPOINTS:", "LOGGING:"] {
            XCTAssertTrue(lines.contains(group), "no \(group) group in\n\(help.stdout)")
        }
        for hidden in ["--failed-at", "--steps-redone", "--fault-", "--beta1"] {
            XCTAssertFalse(help.stdout.contains(hidden), "\(hidden) is shown to users")
        }
        XCTAssertTrue(Harness.goml(["train", "--help-hidden"], timeout: 60).stdout.contains("--failed-at"), "--help-hidden lists the internal flags")
        let batch = lines.firstIndex { $0.contains("--batch <") }.map { lines[$0...].prefix(4).joined() } ?? ""
        XCTAssertTrue(batch.contains("default"), "--batch names its default: \(batch)")
        let version = Harness.goml(["--version"], timeout: 60)
        XCTAssertTrue(version.stdout.hasPrefix("goml-dist ") && version.stdout.contains("commit"), version.output)
    }

    func testGradcheckPassesForBothFFNKinds() {
        let r = Harness.goml(["gradcheck"], timeout: 300)
        Harness.assertSuccess(r, "gradcheck")
        XCTAssertTrue(r.stdout.contains("swiglu") && r.stdout.contains("gelu"), r.stdout)
        XCTAssertFalse(r.stdout.contains("FAIL"), r.stdout)
    }

    /// A wrong backward fails gradcheck (exit 1) with FAIL on the tensors it makes wrong and ok
    /// on those it leaves right: LayerNorm's weight gradient without its x̂ factor (the five
    /// norm weights, not their biases), and attention's mask covering the diagonal (the last
    /// block's wq and wk and all below; not its wv, wo or feed-forward, nearer the loss).
    func testGradcheckFailsOnAWrongBackward() {
        let cases: [(fault: String, failing: Set<String>, passing: Set<String>)] = [
            ("layernorm-weight",
             ["layers.0.attention_norm.weight", "layers.0.ffn_norm.weight", "layers.1.attention_norm.weight", "layers.1.ffn_norm.weight", "norm.weight"],
             ["layers.0.attention_norm.bias", "layers.1.ffn_norm.bias", "norm.bias", "layers.0.attention.wq.weight", "tok_embeddings.weight", "output.weight"]),
            ("attention-diagonal",
             ["layers.1.attention.wq.weight", "layers.1.attention.wk.weight", "layers.1.attention_norm.weight", "tok_embeddings.weight"],
             ["layers.1.attention.wv.weight", "layers.1.attention.wo.weight", "layers.1.feed_forward.w1.weight", "layers.1.feed_forward.w3.weight",
              "norm.weight", "output.weight"]),
        ]
        for (fault, failing, passing) in cases {
            let r = Harness.goml(["gradcheck", "--ffn", "swiglu", "--fault-backward", fault], timeout: 300)
            XCTAssertEqual(r.status, 1, "\(fault)\n\(r.output)")
            // One line per tensor: "  NAME  worst rel err E over N probes  ok|FAIL".
            let lines = r.stdout.split(separator: "\n").filter { $0.contains("worst rel err") }
            XCTAssertEqual(lines.count, 26, "\(fault): one line per tensor\n\(r.stdout)")
            let failed = Set(lines.filter { $0.hasSuffix("FAIL") }.compactMap { $0.split(separator: " ").first.map(String.init) })
            XCTAssertTrue(failing.isSubset(of: failed), "\(fault): expected FAIL on \(failing.subtracting(failed).sorted())\n\(r.stdout)")
            XCTAssertTrue(passing.isDisjoint(with: failed), "\(fault): expected ok on \(passing.intersection(failed).sorted())\n\(r.stdout)")
        }
        let unknown = Harness.goml(["gradcheck", "--fault-backward", "nonsense"], timeout: 60)
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.stderr.contains("unknown --fault-backward 'nonsense'"), unknown.output)
    }

    func testVerifyRejectsAFileThatIsNotAReference() {
        let dir = Harness.temporaryDirectory("notref")
        FileManager.default.createFile(atPath: dir + "/x.safetensors", contents: Data("not a safetensors file".utf8))
        let r = Harness.goml(["verify", "--reference", dir + "/x.safetensors"], timeout: 60)
        XCTAssertEqual(r.status, 1, r.output)
        XCTAssertTrue(r.stderr.contains("error:") && r.stderr.contains("x.safetensors"), r.output)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one-line error expected: \(r.stderr)")
    }
}
