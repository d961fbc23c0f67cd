// `goml-dist plan` as a user runs it: bad inputs end with one line naming the problem and the
// fix; --json prints one object with a row per strategy. Cheap: no plan here measures compute
// (they give docs/calibration/small.json or fail first).

import Foundation
import XCTest

final class PlanTests: XCTestCase {
    static let calibration = Harness.packageRoot + "/docs/calibration/small.json"

    func testBadInputsEndWithOneLine() throws {
        let dir = Harness.temporaryDirectory("plan-bad")
        let garbage = dir + "/garbage.txt"
        try "not json\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["--hosts", "0"], "--hosts is 0; give the number of hosts"),
            (["--ranks-per-host", "0"], "--ranks-per-host is 0"),
            (["--config", "small", "--batch", "8", "--hosts", "3"], "global batch 8 does not divide over 3 host(s) × 1 rank(s) = 3 ranks; choose --batch as a multiple of 3"),
            (["--link-gbit", "10xyz"], "unknown link unit in --link-gbit '10xyz'"),
            (["--link", dir + "/missing.jsonl"], "cannot read --link"),
            (["--link", garbage], "line 1 is not a bench --collectives line"),
            (["--link", garbage, "--link-gbit", "1"], "not both"),
            (["--config", "small", "--calibration", garbage], "holds no bench JSON line"),
            (["--config", "nano", "--calibration", Self.calibration], "is for small, this plan for nano"),
            (["--config", "small", "--batch", "8", "--calibration", Self.calibration, "--micro-batch", "3"], "--micro-batch 3 does not divide each rank's 4 sequences"),
            (["--config", "small", "--batch", "8", "--calibration", Self.calibration, "--sync-every", "1,0"], "--sync-every '1,0'"),
            (["--sweep-svg", dir + "/x.svg"], "one panel per --calibration"),
        ]
        for (arguments, expected) in cases {
            let r = Harness.goml(["plan"] + arguments, timeout: 60)
            let what = "plan " + arguments.joined(separator: " ")
            XCTAssertEqual(r.status, 1, "\(what)\n\(r.output)")
            XCTAssertTrue(r.stderr.hasPrefix("goml-dist: error: ") && r.stderr.contains(expected), "\(what): expected '\(expected)'\n\(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(what): one-line error expected\n\(r.stderr)")
        }
    }

    func testJSONHasARowPerStrategyKeyedByItsFlags() throws {
        let r = Harness.goml(["plan", "--config", "small", "--batch", "8", "--hosts", "2", "--link-gbit", "1", "--calibration", Self.calibration,
                              "--host-memory-gb", "0.3", "--json"], timeout: 60)
        Harness.assertSuccess(r, "plan --json")
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "one JSON object on one line")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        let rows = try XCTUnwrap(object["strategies"] as? [String: [String: Any]])
        XCTAssertEqual(Set(rows.keys), ["--no-shard", "", "--grad-compression bf16", "--no-shard --grad-compression bf16", "--sync-every 10", "--sync-every 50"])
        for (flags, row) in rows {
            for field in ["ms_per_step", "tokens_per_s", "efficiency", "memory_per_rank_bytes", "bytes_per_step", "exposed_forward_ms", "exposed_backward_ms"] {
                XCTAssertNotNil(row[field] as? NSNumber, "'\(flags)' has no \(field)")
            }
        }
        XCTAssertFalse((object["recommended"] as? [Any] ?? []).isEmpty)
        XCTAssertFalse((object["simplifications"] as? [String] ?? []).isEmpty)
        // 0.3 GB per host holds no strategy of small at 4 sequences per rank (304 MB and more): said, not hidden.
        XCTAssertTrue((object["warnings"] as? [String] ?? []).contains { $0.contains("more than a host's 300.0 MB") }, "\(object["warnings"] ?? "")")
    }
}
